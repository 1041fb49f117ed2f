"""ASGI entry point: pages and the REST API over HTTP, live updates over websockets."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from django.conf import settings
from django.core.asgi import get_asgi_application

django_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402

from accounts.auth import WebsocketTokenMiddleware  # noqa: E402
from jobs.routing import websocket_urlpatterns  # noqa: E402


class SameOriginValidator(OriginValidator):
    """Refuses a browser's handshake from a foreign origin. Scripts and the CLI send no Origin
    and authenticate with a token header, which a foreign page cannot make a browser send."""

    def valid_origin(self, parsed_origin):
        return parsed_origin is None or super().valid_origin(parsed_origin)


application = ProtocolTypeRouter({
    "http": django_app,  # /static/ too, through WhiteNoise, when SERVE_STATIC (settings)
    "websocket": SameOriginValidator(
        AuthMiddlewareStack(WebsocketTokenMiddleware(URLRouter(websocket_urlpatterns))),
        settings.ALLOWED_HOSTS,
    ),
})
