"""Guessing is throttled: failed sign-ins on the login page, bad API tokens and bad websocket
tokens are counted per client address and per user name (django-axes, in the shared cache);
past the limit, 429 even for the right password or a good token. Passwords meet Django's
standard validators."""

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.password_validation import validate_password
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.test import Client
from rest_framework.test import APIClient

from portal.asgi import application

LIMIT = 3
GOOD_PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def low_limit(settings):
    """Counts live in Redis and outlive a test: each test starts and ends with none."""
    settings.AXES_FAILURE_LIMIT = LIMIT
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def alice(cast):
    cast.alice.set_password(GOOD_PASSWORD)
    cast.alice.save()
    return cast.alice


def sign_in(username, password, address="10.0.0.1"):
    return Client(REMOTE_ADDR=address).post("/accounts/login/", {
        "username": username, "password": password})


def test_the_right_password_after_too_many_wrong_ones_from_one_address_is_refused(alice):
    for _ in range(LIMIT - 1):
        assert sign_in("alice", "wrong").status_code == 200  # the form again, with its error
    assert sign_in("alice", "wrong").status_code == 429
    assert sign_in("alice", GOOD_PASSWORD).status_code == 429
    assert sign_in("bob", "anything").status_code == 429  # the address is locked out
    # Another address, another name: not locked out.
    assert sign_in("bob", "wrong", address="10.0.0.2").status_code == 200


def test_guessing_one_users_password_from_many_addresses_is_refused(alice):
    for n in range(LIMIT):
        sign_in("alice", "wrong", address=f"10.0.1.{n}")
    assert sign_in("alice", GOOD_PASSWORD, address="10.0.2.1").status_code == 429


def test_the_right_password_before_the_limit_signs_in_and_starts_the_count_again(alice):
    for _ in range(LIMIT - 1):
        sign_in("alice", "wrong")
    assert sign_in("alice", GOOD_PASSWORD).status_code == 302
    for _ in range(LIMIT - 1):
        assert sign_in("alice", "wrong").status_code == 200


def test_the_operator_lifts_a_lockout_by_address_or_by_user_name(alice):
    from django.core.management import call_command

    for _ in range(LIMIT):
        sign_in("alice", "wrong")
    assert sign_in("alice", GOOD_PASSWORD).status_code == 429
    call_command("axes_reset_ip", "10.0.0.1")
    assert sign_in("alice", GOOD_PASSWORD, address="10.0.0.3").status_code == 429  # the name
    call_command("axes_reset_username", "alice")
    assert sign_in("alice", GOOD_PASSWORD).status_code == 302


def api(key, address="10.0.0.1"):
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get("/api/v1/jobs/")


def test_bad_api_tokens_from_one_address_are_throttled_then_even_a_good_one(cast):
    for n in range(LIMIT - 1):
        assert api(f"wrong-token-{n}").status_code == 401
    assert api("wrong-token-last").status_code == 429  # the failure that reached the limit
    refused = api(cast.alice_key)
    assert refused.status_code == 429
    assert "throttled" in refused.json()["detail"]
    assert int(refused["Retry-After"]) > 0
    assert api(cast.alice_key, address="10.0.0.9").status_code == 200


def connect(key, address):
    async def attempt():
        communicator = WebsocketCommunicator(application, "/ws/cluster/", headers=[
            (b"host", b"testserver"), (b"authorization", f"Token {key}".encode())])
        communicator.scope["client"] = (address, 50000)
        connected, code = await communicator.connect(timeout=10)
        if connected:
            output = await communicator.receive_output(timeout=10)
            await communicator.disconnect()
            return output
        return {"type": "websocket.close", "code": code}

    return asyncio.run(attempt())


@pytest.mark.django_db(transaction=True)
def test_bad_websocket_tokens_are_throttled_then_the_handshake_is_refused(cast):
    for n in range(LIMIT):
        assert connect(f"wrong-{n}", "10.0.0.1")["code"] == 4401  # not signed in
    # The limit is reached: even a good token's handshake from there is refused.
    assert connect(cast.alice_key, "10.0.0.1") == {"type": "websocket.close", "code": 1000}
    assert connect(cast.alice_key, "10.0.0.7")["type"] != "websocket.close"


@pytest.mark.parametrize("password", ["12345678901", "password123", "alice123!", "short"])
def test_weak_passwords_are_refused_by_the_standard_validators(cast, password):
    with pytest.raises(ValidationError):
        validate_password(password, user=cast.alice)


def test_a_strong_password_passes(cast):
    validate_password(GOOD_PASSWORD, user=cast.alice)
