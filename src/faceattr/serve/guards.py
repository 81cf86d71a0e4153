"""The web app's outer guards, as plain ASGI middleware: they see every request before a route does.

- :class:`UploadLimit`: a request body on the upload route is counted as it streams in; past
  the limit (declared by Content-Length or not, chunked or not) it is refused with 413 at once,
  before the rest arrives or a byte of it is written anywhere.
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """A request body passed its limit while it was read (answered 413 by the app's error handler)."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="request body over the limit")


async def send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer ``body`` as JSON with ``status`` (for a guard that answers before the app does)."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class UploadLimit:
    """Refuse a POST body to one of ``paths`` past ``max_bytes`` bytes, as it streams in.

    A Content-Length over the limit is answered 413 before the body is read; otherwise the
    bytes are counted as the app reads them, and the read that crosses the limit raises
    :class:`BodyTooLarge`, which the multipart parser passes on (closing what it spooled) and
    the app's error handler answers as 413 with ``message``.
    """

    def __init__(self, app: ASGIApp, paths: tuple[str, ...], max_bytes: int, message: str) -> None:
        self.app = app
        self.paths = paths
        self.max_bytes = max_bytes
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await send_json(send, 413, {"error": self.message}, [(b"connection", b"close")])
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, counted, send)
