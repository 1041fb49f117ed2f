"""`Authorization: Token <key>` for the REST API and the websockets."""

from __future__ import annotations

from datetime import timedelta

from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser
from django.utils import timezone
from rest_framework import authentication, exceptions

from accounts.models import ApiToken, hash_key

LAST_USED_EVERY = timedelta(minutes=1)


def user_for_key(key: str):
    token = (ApiToken.objects.select_related("user")
             .filter(key_hash=hash_key(key), revoked_at__isnull=True).first())
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    # Recorded to the minute: a write on every request would cost more than the request.
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


def key_from_header(value: str) -> str | None:
    parts = value.split()
    if len(parts) == 2 and parts[0].lower() == "token":
        return parts[1]
    return None


class TokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.lower().startswith("token"):
            return None
        key = key_from_header(header)
        if key is None:
            raise exceptions.AuthenticationFailed("Use 'Authorization: Token <key>'.")
        user = user_for_key(key)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return user, key

    def authenticate_header(self, request):
        return self.keyword


class WebsocketTokenMiddleware:
    """Authenticates a websocket handshake that carries `Authorization: Token <key>`;
    a browser's session (set by AuthMiddleware) is used otherwise."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        header = headers.get(b"authorization", b"").decode("latin-1")
        if header:
            key = key_from_header(header)
            user = await database_sync_to_async(user_for_key)(key) if key else None
            scope = {**scope, "user": user or AnonymousUser()}
        return await self.app(scope, receive, send)
