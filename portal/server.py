"""One web server process: daphne, with request bodies limited while they arrive.

Daphne (through Twisted) reads a whole request body, to memory or a temporary file, before the
application sees the request, so no check in Django can stop a huge one. Here the limit is
applied as the body arrives: a declared Content-Length over MAX_BODY_BYTES is answered 413 as
soon as the headers are in, a chunked body the moment its count passes the limit, and a body
still incomplete REQUEST_BODY_TIMEOUT_S after its headers gets 408; each then closes the
connection without reading the rest. `portal.bodylimit` applies the same limit at the ASGI
level, for any other server.

Started by `portal.web` (which starts WEB_PROCESSES of these); run alone as daphne is:
`python -m portal.server -b 127.0.0.1 -p 8000 portal.asgi:application`. With `--reuse-port` it
binds its own socket with SO_REUSEPORT, so that several processes listen on one port and the
kernel spreads the connections over them.
"""

from __future__ import annotations

import json
import socket
import sys
import time

from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server
from django.conf import settings

REASONS = {408: b"Request Timeout", 413: b"Content Too Large"}


def refusal(status: int, detail: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    body = json.dumps({"detail": detail}).encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, REASONS[status], len(body))) + body


class LimitedRequest(WebRequest):
    refused = False
    received = 0
    body_since: float | None = None

    def gotLength(self, length):
        limit = settings.MAX_BODY_BYTES
        if length is not None and length > limit:
            self.refuse(413, f"Request body is {length} bytes; the limit is {limit}.")
            length = 0  # what arrives before the connection closes is dropped
        super().gotLength(length)
        self.body_since = time.monotonic()

    def handleContentChunk(self, data):
        if self.refused:
            return
        self.received += len(data)
        if self.received > settings.MAX_BODY_BYTES:
            self.refuse(413, f"Request body is over the limit of {settings.MAX_BODY_BYTES} "
                             "bytes.")
            return
        super().handleContentChunk(data)

    def process(self):
        self.body_since = None  # all of it is in
        if self.refused:
            return None
        return super().process()

    def check_timeouts(self):
        if self.body_since is not None and not self.refused \
                and time.monotonic() - self.body_since > settings.REQUEST_BODY_TIMEOUT_S:
            self.refuse(408, "The request body did not arrive in time.")
            return
        super().check_timeouts()

    def refuse(self, status: int, detail: str) -> None:
        """Answer at once and close: the rest of the body is never read."""
        self.refused = True
        self.body_since = None
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.write(refusal(status, detail))
            self.channel.loseConnection()


class LimitedHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = LimitedRequest
        return protocol


class PortalServer(Server):
    """Daphne's server with LimitedHTTPFactory in place of the one its run() makes."""

    @property
    def http_factory(self):
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory):
        self._http_factory = LimitedHTTPFactory(self)


class PortalCommandLine(CommandLineInterface):
    server_class = PortalServer


def reuse_port(argv: list[str]) -> list[str]:
    """`--reuse-port -b HOST -p PORT ...`: the socket bound here with SO_REUSEPORT and handed
    to daphne as an adopted descriptor (`-e fd:...`); the other arguments pass through."""
    args, host, port, rest = list(argv), "127.0.0.1", None, []
    while args:
        arg = args.pop(0)
        if arg in ("-b", "--bind"):
            host = args.pop(0)
        elif arg in ("-p", "--port"):
            port = int(args.pop(0))
        elif arg != "--reuse-port":
            rest.append(arg)
    if port is None:
        raise SystemExit("--reuse-port needs -p PORT")
    if ":" in host:  # daphne's fd endpoint adopts IPv4 sockets only
        raise SystemExit(f"several web processes listen on IPv4 addresses only, not {host}: "
                         "set WEB_PROCESSES=1")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    # Twisted adopts the descriptor and closes it once it has its own copy.
    return ["-e", f"fd:fileno={sock.detach()}", *rest]


def main(argv: list[str]) -> None:
    if "--reuse-port" in argv:
        argv = reuse_port(argv)
    PortalCommandLine().run(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
