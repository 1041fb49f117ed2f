"""Which origins may open a websocket: the portal's own, as the browser reached it (scheme, host
and port), or one named in CSRF_TRUSTED_ORIGINS. Compared whole: a page on another port or
scheme of the same host is another origin, and reads nothing."""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or URL, the port filled in from the scheme; None if it
    is not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


def own_origin(scope) -> tuple[str, str, int] | None:
    """The portal's origin as this handshake reached it: its Host header (one ALLOWED_HOSTS
    accepts) with the scheme the browser used (wss: https; behind a TLS proxy, HTTPS=1)."""
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1")
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    secure = scope.get("scheme") == "wss" or settings.HTTPS
    return normalized(f"{'https' if secure else 'http'}://{host}")


def allowed(scope, origin: str) -> bool:
    wanted = normalized(origin)
    if wanted is None:
        return False
    trusted = {normalized(item) for item in settings.CSRF_TRUSTED_ORIGINS}
    return wanted == own_origin(scope) or wanted in trusted


class SameOriginValidator:
    """Refuses (403) a browser's handshake from another origin. Scripts and the CLI send no
    Origin and authenticate with a token header, which a foreign page cannot make a browser
    send."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        origin = dict(scope.get("headers") or []).get(b"origin")
        if origin is not None and not allowed(scope, origin.decode("latin-1")):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)
