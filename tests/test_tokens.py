"""The API-token pages: create (the key shown once), list, revoke; only your own tokens."""

import re

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import ApiToken, hash_key
from audit.models import AuditEntry


@pytest.fixture
def bob(cast):
    client = Client()
    client.force_login(cast.bob)
    return client


def jobs_with(key):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get("/api/v1/jobs/")


def create(client, name):
    """POST the form and follow its redirect; the new key as the page shows it."""
    posted = client.post("/tokens/", {"name": name})
    assert posted.status_code == 302 and posted["Location"] == "/tokens/"
    response = client.get("/tokens/")
    assert response.status_code == 200
    html = response.content.decode()
    match = re.search(r'id="new-key" readonly value="([^"]+)"', html)
    assert match, "the new key is on the page"
    return response, html, match.group(1)


def test_creating_a_token_shows_its_key_once_and_the_key_works(alice, cast):
    response, html, key = create(alice, "laptop")
    token = ApiToken.objects.get(user=cast.alice, name="laptop")
    assert token.key_hash == hash_key(key) and key.startswith(token.prefix)
    assert "portalctl login --url http://testserver" in html
    # Nothing a browser or proxy may keep; out of the session once the page has shown it.
    assert "no-store" in response["Cache-Control"]
    assert key not in str(dict(alice.session))

    assert jobs_with(key).status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None
    assert AuditEntry.objects.filter(action="apitoken.create", target_id=str(token.pk),
                                     actor=cast.alice, via="page").exists()


def test_reloading_after_a_create_makes_no_second_token_and_hides_the_key(alice, cast):
    _, _, key = create(alice, "laptop")
    again = alice.get("/tokens/").content.decode()
    assert key not in again and 'id="new-key"' not in again
    assert ApiToken.objects.filter(user=cast.alice, name="laptop").count() == 1


def test_a_key_left_in_the_session_is_shown_to_its_owner_only(alice, cast):
    token, key = ApiToken.issue(cast.bob, "bobs")
    session = alice.session
    session["tokens.new_key"] = {"id": token.pk, "key": key}
    session.save()
    assert key not in alice.get("/tokens/").content.decode()


def test_the_list_shows_my_tokens_but_never_a_key_again(alice, bob, cast):
    _, _, key = create(alice, "ci")
    ApiToken.issue(cast.bob, "bobs-laptop")
    html = alice.get("/tokens/").content.decode()
    token = ApiToken.objects.get(user=cast.alice, name="ci")
    assert key not in html and 'id="new-key"' not in html
    assert "ci" in html and f"{token.prefix}…" in html and "never" in html
    assert "bobs-laptop" not in html
    assert 'href="/tokens/"' in html  # the nav link


def test_revoking_a_token_makes_it_401(alice, cast):
    _, _, key = create(alice, "old")
    token = ApiToken.objects.get(user=cast.alice, name="old")
    response = alice.post(f"/tokens/{token.pk}/revoke/")
    assert response.status_code == 302 and response["Location"] == "/tokens/"
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert jobs_with(key).status_code == 401
    assert jobs_with(cast.alice_key).status_code == 200  # her other tokens still work
    html = alice.get("/tokens/").content.decode()
    assert "revoked" in html and f'action="/tokens/{token.pk}/revoke/"' not in html
    # Revoking again changes nothing.
    revoked_at = token.revoked_at
    assert alice.post(f"/tokens/{token.pk}/revoke/").status_code == 302
    token.refresh_from_db()
    assert token.revoked_at == revoked_at
    assert AuditEntry.objects.filter(action="apitoken.revoke",
                                     target_id=str(token.pk)).count() == 1


def test_bob_cannot_revoke_alices_token(bob, cast):
    token = ApiToken.objects.get(user=cast.alice)
    assert bob.post(f"/tokens/{token.pk}/revoke/").status_code == 404
    assert bob.post("/tokens/999999/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert jobs_with(cast.alice_key).status_code == 200


def test_revoking_takes_a_post_with_a_csrf_token(cast):
    token = ApiToken.objects.get(user=cast.alice)
    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.alice)
    assert client.get(f"/tokens/{token.pk}/revoke/").status_code == 405
    assert client.post(f"/tokens/{token.pk}/revoke/").status_code == 403
    assert client.post("/tokens/", {"name": "x"}).status_code == 403
    token.refresh_from_db()
    assert token.revoked_at is None
    assert not ApiToken.objects.filter(name="x").exists()


def test_a_token_needs_a_name(alice, cast):
    before = ApiToken.objects.count()
    response = alice.post("/tokens/", {"name": "   "})
    assert response.status_code == 400 and 'data-error="name"' in response.content.decode()
    response = alice.post("/tokens/", {"name": "x" * 101})
    assert response.status_code == 400
    assert ApiToken.objects.count() == before


def test_a_tokens_name_is_escaped(alice):
    _, html, _ = create(alice, "<script>alert(1)</script>")
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_anonymous_visitors_are_sent_to_log_in(cast):
    token = ApiToken.objects.get(user=cast.alice)
    for response in (Client().get("/tokens/"), Client().post("/tokens/", {"name": "x"}),
                     Client().post(f"/tokens/{token.pk}/revoke/")):
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=/tokens/")
    token.refresh_from_db()
    assert token.revoked_at is None and not ApiToken.objects.filter(name="x").exists()
