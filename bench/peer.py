"""The raw peer of bench.live: Channels + channels_redis + daphne as their documentation shows
them, nothing of the portal. Each websocket joins one group on connect (a consumer's `groups`);
a publisher's `group_send` reaches every consumer through the library's own fan-out, each with
its own channel and handler. The pubsub layer, as the portal uses (faster here than the core
layer).

    PEER_REDIS_URL=redis://... PEER_GROUP=bench PEER_PREFIX=peer \
        daphne -b 127.0.0.1 -p PORT bench.peer:application
"""

from __future__ import annotations

import json
import os

import django
from django.conf import settings

GROUP = os.environ.get("PEER_GROUP", "bench")

if not settings.configured:
    settings.configure(INSTALLED_APPS=["channels"], DEBUG=False, USE_TZ=True, CHANNEL_LAYERS={
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                    "CONFIG": {"hosts": [os.environ["PEER_REDIS_URL"]],
                               "prefix": os.environ.get("PEER_PREFIX", "peer")}}})
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402


class Peer(AsyncWebsocketConsumer):
    groups = [GROUP]

    async def connect(self):
        await self.accept()
        await self.send(text_data=json.dumps({"type": "hello", "streams": [GROUP]}))

    async def bench_frame(self, event):
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter({"websocket": Peer.as_asgi()})
