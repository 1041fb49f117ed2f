"""`Authorization: Token <key>` for the REST API and the websockets. A bad token counts as a
failed sign-in of its client address (accounts.guard): past the limit, 429 (the API) or a
refused handshake (websockets), even for a good token, until the lockout ends."""

from __future__ import annotations

from datetime import timedelta

from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.utils import timezone
from rest_framework import authentication, exceptions

from accounts import guard
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
        if guard.locked_out(request._request, key):
            raise exceptions.Throttled(
                wait=settings.AXES_COOLOFF_TIME.total_seconds(),
                detail="Too many failed sign-ins from this address: request was throttled.")
        user = user_for_key(key) if key is not None else None
        if user is None:
            guard.failed(request._request, key, sender=type(self))
        if key is None:
            raise exceptions.AuthenticationFailed("Use 'Authorization: Token <key>'.")
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return user, key

    def authenticate_header(self, request):
        return self.keyword


def websocket_user(scope, key: str | None):
    """(user or None, refused): a handshake from an address locked out is refused outright."""
    request = guard.request_for(scope)
    if guard.locked_out(request, key):
        return None, True
    user = user_for_key(key) if key else None
    if user is None:
        guard.failed(request, key, sender=WebsocketTokenMiddleware)
    return user, False


class WebsocketTokenMiddleware:
    """Authenticates a websocket handshake that carries `Authorization: Token <key>`;
    a browser's session (set by AuthMiddleware) is used otherwise."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        header = headers.get(b"authorization", b"").decode("latin-1")
        if header:
            user, refused = await database_sync_to_async(websocket_user)(
                scope, key_from_header(header))
            if refused:
                return await WebsocketDenier()(scope, receive, send)
            scope = {**scope, "user": user or AnonymousUser()}
        return await self.app(scope, receive, send)
