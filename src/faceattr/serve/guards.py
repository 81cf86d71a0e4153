"""The web app's outer guards, as plain ASGI middleware: they see every request before a route does.

- :class:`Guard` (outermost): a Host header the server does not answer to is 400 (a page on
  another site that rebinds its DNS name to this machine can't read or start anything); a
  raw path that smuggles a separator or a parent step is 404; every answer carries the
  security headers (:data:`SECURITY_HEADERS`); a failure no route expected is a 500 that
  names no Python class (the server's log has the traceback).
- :class:`UploadLimit`: a request body on the upload route is counted as it streams in; past
  the limit (declared by Content-Length or not, chunked or not) it is refused with 413 at once,
  before the rest arrives or a byte of it is written anywhere.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import reprlib
import socket
from collections.abc import Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

#: Raw request paths that smuggle a separator or a parent step past the router.
PATH_TRICK = re.compile(rb"%2f|%5c|%2e%2e|%00|(^|/)\.\.?(/|$)|\\|\x00", re.IGNORECASE)
#: Sent with every answer: scripts and styles from this server's own files only (no inline
#: script), never framed, no type sniffing, no address sent to other sites.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
                                 b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 40, 40, 4, 4, 2


def shown(value: Any) -> str:
    """``repr(value)`` cut to about 40 characters: what an error message may quote of a value a
    client sent (a 5 MB string is never echoed back)."""
    return _short.repr(value)


def clipped(text: str, limit: int = 40) -> str:
    """A name a client sent (an id, a field), cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def host_name(header: str) -> str:
    """The name of a Host header without its port, lower case: ``[::1]:80`` -> ``::1``."""
    host = header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def allowed_hosts(bound: str, extra: Iterable[str]) -> tuple[frozenset[str], bool]:
    """The Host names the server answers to: the loopback names, the address it is bound to and
    ``extra`` (``serve.allowed_hosts``). Returns (names, any address literal too): bound to every
    interface (0.0.0.0 or ::), any IP address and this machine's name are accepted as well (a
    DNS-rebinding page always sends its own name, never an address). ``*`` accepts any Host."""
    names = {*LOOPBACK_NAMES, *(host_name(h) for h in extra)}
    wildcard = bound.strip() in WILDCARD_HOSTS
    if wildcard:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    else:
        names.add(host_name(bound))
    return frozenset(names), wildcard


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """Host allow-list, path tricks, security headers and the last-resort 500 (see the module doc).

    ``hosts``/``any_address``: from :func:`allowed_hosts`. ``error``: builds the answer to an
    error, ``error(scope, status, message) -> (status, headers, body bytes)`` (JSON for the API,
    a page for a browser).
    """

    def __init__(self, app: ASGIApp, hosts: frozenset[str], any_address: bool, error: Any) -> None:
        self.app = app
        self.hosts = hosts
        self.any_host = "*" in hosts
        self.any_address = any_address
        self.error = error

    def host_allowed(self, header: str | None) -> bool:
        if header is None or self.any_host:  # HTTP/1.0 without Host: no browser, so no rebinding
            return True
        name = host_name(header)
        return name in self.hosts or (self.any_address and _is_address(name))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in SECURITY_HEADERS if k not in names)]
            await send(message)

        async def answer(status: int, message: str) -> None:
            status, headers, body = self.error(scope, status, message)
            await with_headers({"type": "http.response.start", "status": status,
                                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await with_headers({"type": "http.response.body", "body": body})

        host = Headers(scope=scope).get("host")
        if not self.host_allowed(host):
            await answer(400, f"Host {shown(host)}: not a name this server answers to (serve.allowed_hosts)")
            return
        raw = scope.get("raw_path") or scope["path"].encode()
        if PATH_TRICK.search(raw.split(b"?", 1)[0]):
            await answer(404, "not found")
            return
        try:
            await self.app(scope, receive, with_headers)
        except Exception:  # never a traceback or a class name to the client; the log has both
            log.exception("request %s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await answer(500, "internal error (the server's log has the details)")


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
