"""Who a request is, at the HTTP edge: the session cookie and the CSRF header (``sessions.py``
signs and checks them).

A route asks :class:`Access` for the request's session (``None`` when it has none), for a
session it must have (else 404: another visitor's things are never shown to exist) or for a
session with the right ``X-CSRF-Token`` header (every POST/PUT; else 403). The cookie is kept
by the browser as long as the session's uploads are kept (``serve.retention_hours``).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from faceattr.serve.errors import ApiError
from faceattr.serve.sessions import Sessions

COOKIE = "faceattr_session"
CSRF_HEADER = "X-CSRF-Token"


class Access:
    """Sessions and CSRF tokens of requests; ``retention_s``: the cookie's lifetime in seconds."""

    def __init__(self, sessions: Sessions, retention_s: float) -> None:
        self.sessions = sessions
        self.retention_s = retention_s

    def session_of(self, request: Request) -> str | None:
        """The request's session id, or None (no cookie, or one not signed by this server)."""
        return self.sessions.session_of(request.cookies.get(COOKIE))

    def need_session(self, request: Request) -> str:
        """The request's session id; ``ApiError(404)`` when it has none."""
        sid = self.session_of(request)
        if sid is None:
            raise ApiError(404, "not found")
        return sid

    def need_csrf(self, request: Request) -> str:
        """The request's session id when it sends that session's CSRF token; ``ApiError(403)`` otherwise."""
        sid = self.session_of(request)
        if sid is None or not self.sessions.csrf_ok(sid, request.headers.get(CSRF_HEADER, "")):
            raise ApiError(403, f"missing or wrong {CSRF_HEADER} header (GET /api/session gives it)")
        return sid

    def set_cookie(self, response: Response, cookie: str) -> None:
        """The session cookie, kept by the browser as long as the session's uploads are kept."""
        response.set_cookie(COOKIE, cookie, max_age=int(self.retention_s), httponly=True, samesite="lax", path="/")

    def session_or_new(self, request: Request) -> tuple[str, str | None]:
        """(session id, None) for a request with a session; (id, cookie) of a new session
        otherwise, the cookie for :meth:`set_cookie`. Nothing is stored for a session before
        its first upload."""
        sid = self.session_of(request)
        return (sid, None) if sid is not None else self.sessions.new()

    def csrf(self, sid: str) -> str:
        """The CSRF token of session ``sid`` (what ``X-CSRF-Token`` must carry)."""
        return self.sessions.csrf(sid)
