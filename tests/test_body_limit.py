"""Request bodies over MAX_BODY_BYTES are refused before they are read: at the ASGI level
(portal.bodylimit) and, earlier still, by the web server as the bytes arrive (portal.web)."""

import asyncio
import json

import pytest
from django.conf import settings
from django.test import override_settings

from portal.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def scope(headers, path="/api/v1/jobs/"):
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
            "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                        *headers]}


def call(headers, chunks, *, path="/api/v1/jobs/", stalls=False):
    """Run one request through the portal's ASGI application; what it sent, and how many of
    the body's chunks it asked for. A client that `stalls` says more is coming after the last
    chunk, and sends nothing."""
    sent, asked = [], 0

    async def receive():
        nonlocal asked
        if asked < len(chunks):
            asked += 1
            return {"type": "http.request", "body": chunks[asked - 1],
                    "more_body": stalls or asked < len(chunks)}
        await asyncio.sleep(3600)  # a client that sends nothing more

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(application(scope(headers, path), receive, send), 30))
    return sent, asked


def status_of(sent):
    return [m["status"] for m in sent if m["type"] == "http.response.start"]


def test_a_declared_300_mib_body_gets_413_and_not_one_byte_is_read():
    sent, asked = call([(b"content-length", str(300 * 2**20).encode())], [b"x" * 65536] * 10)
    assert status_of(sent) == [413]
    assert asked == 0
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert str(settings.MAX_BODY_BYTES) in body["detail"]


def test_an_anonymous_page_post_with_a_big_declared_body_gets_413_too():
    sent, asked = call([(b"content-length", b"5000000")], [b"x"], path="/accounts/login/")
    assert status_of(sent) == [413] and asked == 0


@override_settings(MAX_BODY_BYTES=100_000)
def test_a_chunked_body_is_refused_as_soon_as_what_arrived_passes_the_limit():
    sent, asked = call([(b"transfer-encoding", b"chunked")], [b"x" * 40_000] * 50)
    assert status_of(sent) == [413]  # only the guard's answer: the view never answered
    assert asked == 3  # 120 000 bytes: the third chunk passed the limit, no more was read


@override_settings(REQUEST_BODY_TIMEOUT_S=0.5)
def test_a_body_that_stops_arriving_gets_408():
    sent, asked = call([(b"content-length", b"500000")], [b"x" * 1000], stalls=True)
    assert status_of(sent) == [408] and asked == 1


def test_a_content_length_that_is_no_number_gets_400():
    sent, asked = call([(b"content-length", b"12abc")], [b"{}"])
    assert status_of(sent) == [400] and asked == 0


def test_a_body_within_the_limit_reaches_the_view():
    sent, _ = call([(b"content-length", b"2")], [b"{}"])
    assert status_of(sent) == [401]  # no credentials: the API answered, not the guard
