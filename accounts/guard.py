"""Authentication failures that are not a password (a bad API token, a bad websocket token)
are counted with the sign-in failures (django-axes, per client address): past the limit the
address is refused with 429 until the lockout ends, as a failed sign-in would be."""

from __future__ import annotations

import logging

from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.http import HttpRequest, HttpResponse, JsonResponse
from redis.exceptions import RedisError

from accounts.models import PREFIX_LEN

log = logging.getLogger(__name__)


def credentials(key: str | None) -> dict:
    """What axes counts a token failure under: the address, and the token's first characters
    as its "user name" (never the whole key)."""
    return {"username": f"token:{(key or '')[:PREFIX_LEN]}"}


def locked_out(request: HttpRequest, key: str | None) -> bool:
    """Whether this address or token prefix is locked out. The counts live in the shared cache
    (Redis): while it is away nobody is locked out, as the request throttles let requests
    through, so a Redis restart does not take authentication down with it."""
    try:
        return AxesProxyHandler.is_locked(request, credentials(key))
    except RedisError as exc:
        log.warning("sign-in failures not checked, the cache is away: %s", exc)
        return False


def failed(request: HttpRequest, key: str | None, sender) -> None:
    try:
        user_login_failed.send(sender=sender, credentials=credentials(key), request=request)
    except RedisError as exc:
        log.warning("a failed token not counted, the cache is away: %s", exc)


def request_for(scope) -> HttpRequest:
    """A websocket handshake as the HttpRequest axes reads (address, path, user agent)."""
    request = HttpRequest()
    headers = dict(scope.get("headers") or [])
    client = scope.get("client") or ("", 0)
    request.method = "GET"
    request.path = request.path_info = scope.get("path", "")
    request.META = {"REMOTE_ADDR": client[0], "PATH_INFO": request.path,
                    "HTTP_USER_AGENT": headers.get(b"user-agent", b"").decode("latin-1"),
                    "HTTP_ACCEPT": headers.get(b"accept", b"").decode("latin-1")}
    return request


def lockout_response(request, original_response=None, credentials=None) -> HttpResponse:
    """429 with Retry-After: JSON for the API, a short page for the browser."""
    wait = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    message = "Too many failed sign-ins: request was throttled. Try again later."
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": message}, status=429)
    else:
        response = HttpResponse(message, content_type="text/plain; charset=utf-8", status=429)
    response["Retry-After"] = wait
    return response
