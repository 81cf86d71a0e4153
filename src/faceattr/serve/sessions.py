"""Visitors' sessions without a database row each: a signed cookie and a CSRF token derived from it.

A visitor gets a random session id in an HttpOnly, SameSite=Lax cookie, signed with the
server's secret (``<id>.<signature>``, so only ids this server issued are accepted). The CSRF
token every POST/PUT must send is an HMAC of the id under the same secret: nothing is stored
for a visitor who only looks. The session's row in the database is written by its first
upload (:meth:`Store.add_session`), and goes with its last upload after
``serve.retention_hours``; the cookie lasts as long (``Max-Age``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

#: A cookie's shape: 32 URL-safe characters of id, a dot, 32 hex digits of signature.
COOKIE_VALUE = re.compile(r"([A-Za-z0-9_-]{32})\.([0-9a-f]{32})")


class Sessions:
    """Issues and checks session cookies and CSRF tokens under ``secret`` (bytes, kept by the store)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, purpose: str, sid: str) -> str:
        return hmac.new(self._secret, f"{purpose}:{sid}".encode(), hashlib.sha256).hexdigest()[:32]

    def new(self) -> tuple[str, str]:
        """A fresh (session id, cookie value)."""
        sid = secrets.token_urlsafe(24)  # 24 random bytes: 32 characters
        return sid, f"{sid}.{self._mac('session', sid)}"

    def session_of(self, cookie: str | None) -> str | None:
        """The session id of a cookie value this server signed, else None."""
        m = COOKIE_VALUE.fullmatch(cookie or "")
        if m is None or not hmac.compare_digest(m[2], self._mac("session", m[1])):
            return None
        return m[1]

    def csrf(self, sid: str) -> str:
        """The session's CSRF token (the ``X-CSRF-Token`` header's value)."""
        return self._mac("csrf", sid)

    def csrf_ok(self, sid: str, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.csrf(sid).encode())
