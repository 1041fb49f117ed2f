"""Websockets: authenticate, join the groups the user may see (the selectors' rule), forward."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from jobs import selectors

NOT_AUTHENTICATED = 4401
NOT_FOUND = 4404


class LiveConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.joined = []
        user = self.scope.get("user")
        if not user or not user.is_authenticated:
            await self.accept()
            await self.close(code=NOT_AUTHENTICATED)
            return
        groups = await database_sync_to_async(self.allowed_groups)(user)
        if groups is None:
            await self.accept()
            await self.close(code=NOT_FOUND)
            return
        # Joined before the handshake completes: nothing published after "hello" is missed.
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.joined = groups
        await self.accept()
        await self.send_json({"type": "hello", "streams": groups})

    def allowed_groups(self, user) -> list[str] | None:
        raise NotImplementedError

    async def disconnect(self, code):
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def portal_frame(self, message):
        """A frame {"type": "batch", "stream", "seq", "events": [...]}, encoded once by the
        broadcaster for every client of the stream."""
        await self.send(text_data=message["text"])


class JobConsumer(LiveConsumer):
    def allowed_groups(self, user):
        job = selectors.job_for(user, self.scope["url_route"]["kwargs"]["job_id"])
        return None if job is None else [selectors.job_group(job.pk)]


class ClusterConsumer(LiveConsumer):
    def allowed_groups(self, user):
        return selectors.job_groups(user) + ["cluster"] + (["alerts"] if user.is_staff else [])
