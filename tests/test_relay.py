"""The relay's way to the sockets under daphne: found under the session middleware, and a frame
sent at once where nothing waits before it, in order where something does."""

import asyncio
import socket as sockets
from collections import deque
from functools import partial

import pytest
from channels.sessions import SessionMiddlewareStack
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from jobs.consumers import daphne_socket, send_prepared


class DaphneProtocol:
    """What daphne binds its send to: a websocket protocol (autobahn's, in daphne)."""

    def sendPreparedMessage(self, prepared):
        raise AssertionError("not called here")


async def handle_reply(protocol, message):
    pass


def test_the_relay_finds_daphnes_socket_under_the_session_middleware():
    protocol = DaphneProtocol()
    seen = {}

    async def consumer(scope, receive, send):
        seen["send"] = send

    app = SessionMiddlewareStack(consumer)  # as AuthMiddlewareStack wraps the consumers
    asyncio.run(app({"type": "websocket", "headers": []}, None,
                    partial(handle_reply, protocol)))
    assert seen["send"] is not None
    assert daphne_socket(seen["send"]) is protocol
    assert daphne_socket(partial(handle_reply, object())) is None  # not daphne's: ASGI send


class Reactor:
    def __init__(self):
        self.writers = []

    def addWriter(self, selectable):
        self.writers.append(selectable)

    def removeWriter(self, selectable):
        self.writers.remove(selectable)


class Socket:
    """The parts of autobahn's protocol that send_prepared reads, over a real TCP transport."""

    def __init__(self, transport):
        self.transport = transport
        self._perMessageCompress = None
        self.send_queue = deque()
        self.prepared_sent = []

    def sendPreparedMessage(self, prepared):
        self.prepared_sent.append(prepared)
        self.transport.write(prepared.payloadHybi)


class Prepared:
    def __init__(self, payload: bytes):
        self.payloadHybi = payload


@pytest.fixture
def pair():
    ours, theirs = sockets.socketpair()
    reactor = Reactor()
    transport = tcp.Connection(ours, None, reactor=reactor)
    transport.connected = True
    yield Socket(transport), theirs, reactor
    ours.close()
    theirs.close()


def test_a_frame_goes_straight_to_an_idle_socket(pair):
    socket, peer, reactor = pair
    send_prepared(socket, Prepared(b"frame-1"))
    send_prepared(socket, Prepared(b"frame-2"))
    assert peer.recv(100) == b"frame-1frame-2"
    assert reactor.writers == [] and socket.prepared_sent == []


def test_a_frame_waits_behind_what_the_transport_holds_and_keeps_its_order(pair):
    socket, peer, reactor = pair
    socket.transport.write(b"earlier")  # buffered by Twisted until the socket is writable
    send_prepared(socket, Prepared(b"frame"))
    assert len(socket.prepared_sent) == 1  # the usual way, after it
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)
    socket.transport.doWrite()
    assert peer.recv(100) == b"earlierframe"


def test_what_a_full_socket_does_not_take_is_left_to_the_transport(pair):
    socket, peer, reactor = pair
    big = b"x" * (8 << 20)  # more than a socket buffer holds
    send_prepared(socket, Prepared(big))
    held = socket.transport._tempDataLen
    assert 0 < held < len(big)
    assert reactor.writers == [socket.transport]  # Twisted sends the rest when it can
    send_prepared(socket, Prepared(b"next"))
    assert len(socket.prepared_sent) == 1  # behind the rest, not before it
    received = bytearray()
    peer.setblocking(False)
    while len(received) < len(big) + 4:
        try:
            received += peer.recv(1 << 20)
        except BlockingIOError:
            socket.transport.doWrite()
    assert bytes(received) == big + b"next"


def test_a_compressed_or_queued_socket_takes_the_usual_way(pair):
    socket, peer, reactor = pair
    socket._perMessageCompress = object()
    send_prepared(socket, Prepared(b"a"))
    socket._perMessageCompress = None
    socket.send_queue.append((b"sync", True))
    send_prepared(socket, Prepared(b"b"))
    assert [p.payloadHybi for p in socket.prepared_sent] == [b"a", b"b"]


def test_a_tls_transport_takes_the_usual_way(pair):
    """A wrapper such as TLS's forwards what it lacks to the TCP connection under it: the
    frame must not go to that raw socket unencrypted."""
    socket, peer, reactor = pair
    wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())
    wrapper.makeConnection(socket.transport)
    socket.transport = wrapper
    send_prepared(socket, Prepared(b"frame"))
    assert len(socket.prepared_sent) == 1
