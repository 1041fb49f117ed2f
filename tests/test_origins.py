"""A websocket handshake from a browser is accepted only from the portal's own origin, compared
by scheme, host and port, or from one named in CSRF_TRUSTED_ORIGINS."""

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from portal.origins import SameOriginValidator


async def accepting(scope, receive, send):
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await receive()


def connects(origin: str | None, *, host="127.0.0.1:8000", secure=False) -> bool:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))

    async def attempt():
        communicator = WebsocketCommunicator(SameOriginValidator(accepting), "/ws/cluster/",
                                             headers=headers)
        if secure:
            communicator.scope["scheme"] = "wss"
        connected, _ = await communicator.connect(timeout=5)
        await communicator.disconnect()
        return connected

    return asyncio.run(attempt())


def test_the_portals_own_origin_connects():
    assert connects("http://127.0.0.1:8000")
    assert connects("http://localhost", host="localhost")
    assert connects("https://localhost", host="localhost", secure=True)


def test_no_origin_at_all_connects_a_script_authenticates_with_its_token():
    assert connects(None)


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1:9999",  # another port of the same host
    "https://127.0.0.1:8000",  # another scheme
    "http://localhost:8000",  # another host name, though allowed
    "http://evil.example",
    "null",
    "http://127.0.0.1:8000.evil.example",
])
def test_any_other_origin_is_refused(origin):
    assert not connects(origin)


def test_the_page_over_https_is_not_the_page_over_http():
    assert not connects("http://localhost", host="localhost", secure=True)


def test_a_host_outside_allowed_hosts_is_no_origin_of_the_portal():
    assert not connects("http://attacker.example", host="attacker.example")


@override_settings(CSRF_TRUSTED_ORIGINS=["https://portal.example.com"])
def test_an_origin_in_csrf_trusted_origins_connects():
    assert connects("https://portal.example.com")
    assert not connects("https://portal.example.com:8443")
