"""ASGI entry point: pages and the REST API over HTTP, live updates over websockets."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.auth import WebsocketTokenMiddleware  # noqa: E402
from jobs.routing import websocket_urlpatterns  # noqa: E402
from portal.bodylimit import BodyLimit  # noqa: E402
from portal.origins import SameOriginValidator  # noqa: E402

application = ProtocolTypeRouter({
    "http": BodyLimit(django_app),  # /static/ too, through WhiteNoise, when SERVE_STATIC
    "websocket": SameOriginValidator(
        AuthMiddlewareStack(WebsocketTokenMiddleware(URLRouter(websocket_urlpatterns)))),
})
