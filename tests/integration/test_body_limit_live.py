"""The live web server refuses an oversized body as it arrives: a 300 MiB declaration is
answered 413 before one byte of its body is read, and the web process does not grow; a chunked
body is cut off at the limit; a body that stops arriving gets 408."""

import os
import socket
import time

import psutil
import pytest

from portal.cluster import Cluster, free_port
from tests.integration import conftest

pytestmark = pytest.mark.integration
MIB = 2**20


@pytest.fixture(scope="module")
def web(django_db_setup, django_db_blocker):
    """The web server alone (daphne through portal.web), with a short body deadline."""
    with django_db_blocker.unblock():
        env = {**os.environ, "DATABASE_URL": conftest.test_database_url(),
               "REQUEST_BODY_TIMEOUT_S": "2"}
    cluster = Cluster(env, quiet=True)
    port = free_port()
    try:
        proc = cluster.start_web(port)
        yield port, psutil.Process(proc.pid)
    finally:
        cluster.stop()


def request_head(headers: dict) -> bytes:
    lines = ["POST /api/v1/jobs/ HTTP/1.1", "Host: 127.0.0.1",
             "Content-Type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def push(sock: socket.socket, total: int) -> int:
    """Send up to `total` bytes of body; how many went before the server closed."""
    sent, block = 0, b"x" * MIB
    try:
        while sent < total:
            sent += sock.send(block)
    except OSError:
        pass
    return sent


def test_a_declared_300_mib_body_is_answered_413_at_once_and_the_server_does_not_grow(web):
    port, process = web
    before = process.memory_info().rss
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head({"Content-Length": 300 * MIB}))
        reply = answer(sock)  # before any of the body was sent
        assert reply.startswith(b"HTTP/1.1 413"), reply
        push(sock, 300 * MIB)
    time.sleep(0.5)
    grown = process.memory_info().rss - before
    assert grown < 20 * MIB, f"the web process grew by {grown / MIB:.0f} MiB"


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(web):
    port, process = web
    before = process.memory_info().rss
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head({"Transfer-Encoding": "chunked"}))
        chunk = b"%x\r\n%s\r\n" % (MIB // 4, b"x" * (MIB // 4))
        try:
            for _ in range(1200):  # 300 MiB, if nothing stopped it
                sock.sendall(chunk)
        except OSError:
            pass
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply
    assert process.memory_info().rss - before < 20 * MIB


def test_a_body_that_stops_arriving_gets_408_and_the_connection_is_closed(web):
    port, _ = web
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head({"Content-Length": 500_000}) + b"x" * 1000)
        started = time.monotonic()
        reply = answer(sock, timeout=15)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert time.monotonic() - started < 10
        sock.settimeout(5)
        assert sock.recv(65536) == b""  # closed: nothing more is awaited


def test_a_small_body_is_served_as_before(web):
    port, _ = web
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head({"Content-Length": 2}) + b"{}")
        assert answer(sock).startswith(b"HTTP/1.1 401")
