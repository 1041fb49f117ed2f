"""Websockets: authenticate, join the streams the user may see (the selectors' rule), forward.

A web process holds one relay: it joins each stream once for all of the process's websockets
and writes each frame (encoded once by the broadcaster, framed once per process) to them
itself. So a frame costs one channel-layer message per process, not one per client, and a
thousand dashboards cost the process little more than their sockets' writes. There is one web
process per core (portal.web), each with its own relay and its share of the sockets.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from functools import partial
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from twisted.internet import tcp

from jobs import selectors
from nodes import selectors as node_selectors
from workers import wire

log = logging.getLogger(__name__)
BAD_REQUEST = 4400  # a `show` that names what this socket does not offer
NOT_AUTHENTICATED = 4401
NOT_FOUND = 4404
ACCESS_CHANGED = 4409  # the user's teams or rights changed: reconnect, and see what is allowed


class Relay:
    def __init__(self):
        self.layer = get_channel_layer()
        self.members: dict[str, set[LiveConsumer]] = defaultdict(set)
        self.channel: str | None = None
        self.pump: asyncio.Task | None = None

    async def join(self, streams: list[str], consumer: LiveConsumer) -> None:
        if self.channel is None:
            self.channel = await self.layer.new_channel()
        if self.pump is None or self.pump.done():
            self.pump = asyncio.ensure_future(self.forward())
        for stream in streams:
            if not self.members[stream]:
                await self.layer.group_add(stream, self.channel)
            self.members[stream].add(consumer)

    async def leave(self, streams: list[str], consumer: LiveConsumer) -> None:
        for stream in streams:
            members = self.members.get(stream)
            if members is None:
                continue
            members.discard(consumer)
            if not members:
                del self.members[stream]
                await self.layer.group_discard(stream, self.channel)

    async def forward(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # a layer hiccup: the clients will see a gap and resync
                log.exception("relay: receiving a frame failed")
                await asyncio.sleep(0.1)
                continue
            if message.get("type") != "portal.frame":
                continue
            text, prepared = message["text"], None
            for consumer in list(self.members.get(message["stream"], ())):
                try:
                    socket = consumer.socket
                    if socket is None or consumer.held is not None:
                        await consumer.frame(text)
                    elif socket.state == socket.STATE_OPEN:
                        if prepared is None:
                            prepared = socket.factory.prepareMessage(text.encode())
                        send_prepared(socket, prepared)
                except Exception:  # a socket closing as we write: the others still get it
                    log.debug("relay: a socket missed a frame", exc_info=True)


_relays: dict[asyncio.AbstractEventLoop, Relay] = {}


def relay() -> Relay:
    loop = asyncio.get_running_loop()
    if loop not in _relays:
        _relays[loop] = Relay()
    return _relays[loop]


def daphne_socket(send):
    """The websocket protocol object under daphne (its ASGI send is the server's handle_reply
    bound to it), else None. Through it a frame is framed once per process and the same bytes
    written to every socket (autobahn's prepared messages), instead of once per socket through
    the ASGI send; under another server frames take the ASGI send.

    Channels' session middleware wraps the send (to save the session when the socket is
    accepted) and passes every later message through as it is: the server's send is under it."""
    while hasattr(getattr(send, "__self__", None), "real_send"):
        send = send.__self__.real_send
    protocol = send.args[0] if isinstance(send, partial) and send.args else None
    return protocol if hasattr(protocol, "sendPreparedMessage") else None


def send_prepared(socket, prepared) -> None:
    """A prepared frame onto a daphne socket, sent now where nothing waits before it.

    Twisted's TCP transport never sends in write(): it buffers, asks the event loop to watch
    the socket, and sends on the next turn of the loop, then stops watching. For a small frame
    to a thousand sockets that is two epoll_ctl calls and a loop turn per socket per frame,
    most of a web process's time under load. Where the frame is not compressed and neither
    autobahn nor Twisted holds anything unsent for this socket, it goes straight to the socket
    (what asyncio's own transports do); what the socket does not take, and every other case (a
    TLS transport, a backlog, compression), goes the usual way, after it, in order."""
    transport = socket.transport
    # Plain TCP only: a TLS wrapper (daphne's ssl: endpoint) forwards what it lacks, the
    # raw socket's writeSomeData included, to the connection under it.
    plain = isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False)
    send_some = transport.writeSomeData if plain else None
    if (send_some is None or socket._perMessageCompress is not None or socket.send_queue
            or not transport.connected or transport.disconnecting
            or transport._tempDataLen or transport.offset < len(transport.dataBuffer)):
        socket.sendPreparedMessage(prepared)
        return
    data = prepared.payloadHybi
    sent = send_some(data)
    if isinstance(sent, int) and sent >= 0:
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)  # the rest, or after a lost connection (which Twisted then drops)


class LiveConsumer(AsyncJsonWebsocketConsumer):
    socket = None  # daphne's protocol object for this connection, once accepted

    # What a page may ask for with `?show=a,b` (all of them without it): it gets the streams of
    # what it shows and no others.
    TOPICS: tuple[str, ...] = ()

    def shown(self) -> set[str]:
        query = parse_qs((getattr(self, "scope", None) or {}).get("query_string", b"").decode())
        asked = query.get("show")
        if not asked:
            return set(self.TOPICS)
        names = {name.strip() for value in asked for name in value.split(",") if name.strip()}
        unknown = names - set(self.TOPICS)
        if unknown:
            raise ValueError(f"show: {', '.join(sorted(unknown))} is not one of "
                             f"{', '.join(self.TOPICS) or 'nothing'}")
        return names

    async def connect(self):
        self.joined: list[str] = []
        self.held: list[str] | None = []  # frames that came before "hello" went out
        user = self.scope.get("user")
        if not user or not user.is_authenticated:
            await self.accept()
            await self.close(code=NOT_AUTHENTICATED)
            return
        try:
            self.shown()
        except ValueError as exc:
            await self.accept()
            await self.close(code=BAD_REQUEST, reason=str(exc)[:120])
            return
        streams = await database_sync_to_async(self.allowed_streams)(user)
        if streams is None:
            await self.accept()
            await self.close(code=NOT_FOUND)
            return
        # Joined before the handshake completes: nothing published after "hello" is missed.
        await relay().join(streams, self)
        self.joined = streams
        await self.accept()
        self.socket = daphne_socket(self.base_send)
        await self.send_json({"type": "hello", "streams": streams})
        held, self.held = self.held, None
        for text in held:
            await self.send(text_data=text)
        self.watch = asyncio.ensure_future(self.recheck(user.pk))

    async def recheck(self, user_id: int) -> None:
        """Access is decided at connect and checked again every WS_ACCESS_RECHECK_S: a user
        taken out of a team, deactivated or no longer staff stops receiving what they may no
        longer see (the socket is closed; a client reconnects and gets what it may)."""
        while True:
            await asyncio.sleep(settings.WS_ACCESS_RECHECK_S)
            try:
                allowed = await database_sync_to_async(self.streams_of)(user_id)
            except Exception:  # the database away: check again next time
                log.warning("websocket: access not rechecked", exc_info=True)
                continue
            if allowed != self.joined:
                await self.close(code=ACCESS_CHANGED)
                return

    def streams_of(self, user_id: int) -> list[str] | None:
        user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
        return None if user is None else self.allowed_streams(user)

    async def frame(self, text: str) -> None:
        """A frame {"type": "batch", "stream", "seq", "events": [...]}, from the relay."""
        if self.held is not None:
            self.held.append(text)
        else:
            await self.send(text_data=text)

    def allowed_streams(self, user) -> list[str] | None:
        raise NotImplementedError

    async def disconnect(self, code):
        watch = getattr(self, "watch", None)
        if watch is not None:
            watch.cancel()
        if self.joined:
            await relay().leave(self.joined, self)

    async def receive_json(self, content, **kwargs):
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})


class JobConsumer(LiveConsumer):
    def allowed_streams(self, user):
        job = selectors.job_for(user, self.scope["url_route"]["kwargs"]["job_id"])
        return None if job is None else [selectors.job_group(job.pk)]


class ClusterConsumer(LiveConsumer):
    """The dashboard (`?show=nodes,jobs,alerts`) and the job list (`?show=jobs`): node cards,
    the summary and the feed (nodes), the states and progress of the jobs the user may see
    (jobs), incidents for staff (alerts)."""

    TOPICS = ("nodes", "jobs", "alerts")

    def allowed_streams(self, user):
        show = self.shown()
        jobs = selectors.job_groups(user) if "jobs" in show else []
        nodes = [wire.CLUSTER] if "nodes" in show else []
        staff = [wire.ALERTS] if user.is_staff and "alerts" in show else []
        return [*jobs, *nodes, *staff]


class NodeConsumer(LiveConsumer):
    """A node's page: its whole health at each heartbeat (its own stream), and with `jobs` the
    states of the jobs the user may see (the page lists those that ran there)."""

    TOPICS = ("jobs",)

    def allowed_streams(self, user):
        name = self.scope["url_route"]["kwargs"]["name"]
        if not node_selectors.nodes().filter(name=name).exists():
            return None
        jobs = selectors.job_groups(user) if "jobs" in self.shown() else []
        return [wire.node_group(name), *jobs]
