"""Request bodies over MAX_BODY_BYTES get 413 at the ASGI level, before Django reads them:
a declared Content-Length over the limit before the application is called at all, a body
without one (chunked) as soon as what has arrived passes it; a body whose next part does not
come within REQUEST_BODY_TIMEOUT_S gets 408. Then the application is told the client went
away, so it never answers. Anonymous or not: nothing is read first.

`portal.web` (the web server) applies the same limit earlier still, as the bytes arrive on
the socket."""

from __future__ import annotations

import asyncio
import json

from django.conf import settings


async def respond(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def declared_length(scope) -> int | None:
    """The Content-Length header as a number; None without one; -1 if it is not a number."""
    for name, value in scope.get("headers") or []:
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() else -1
    return None


class BodyLimit:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = settings.MAX_BODY_BYTES
        length = declared_length(scope)
        if length == -1:
            return await respond(send, 400, "Content-Length is not a number.")
        if length is not None and length > limit:
            return await respond(send, 413, f"Request body is {length} bytes; the limit is "
                                            f"{limit}.")
        received = 0
        refused = complete = False

        async def refuse(status: int, detail: str) -> dict:
            nonlocal refused
            refused = True
            await respond(send, status, detail)
            return {"type": "http.disconnect"}

        async def counted_receive():
            nonlocal received, complete
            if refused:
                return {"type": "http.disconnect"}
            if complete:  # the application listens for a disconnect: no deadline for that
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), settings.REQUEST_BODY_TIMEOUT_S)
            except TimeoutError:
                return await refuse(408, "The request body did not arrive in time.")
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > limit:
                    return await refuse(413, f"Request body is over the limit of {limit} "
                                             "bytes.")
            return message

        async def guarded_send(message):
            if not refused:  # the 413 was the answer
                await send(message)

        return await self.app(scope, counted_receive, guarded_send)
