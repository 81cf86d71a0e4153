"""How the web app answers an error: JSON ``{"error": "<one line>"}``, or a page for a browser
asking for one of the pages (``error.html``).

:class:`ApiError` is what a route or a service raises for an answer with a status and a message;
:func:`install_error_handlers` turns it, Starlette's own errors (404, 405, a body over the
limit), a request that fails validation and a :class:`~faceattr.serve.store.StorageError` (503)
into that one-line answer. :class:`ErrorAnswers` builds the answer; the outer guard
(``guards.Guard``) uses it too, for the errors it answers before the app runs.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from faceattr.serve.guards import BodyTooLarge, clipped
from faceattr.serve.store import StorageError

log = logging.getLogger("faceattr.serve.app")  # the app's log, as before the routes were split out

#: Route prefixes that answer files or JSON, never a page (their errors are JSON too).
NOT_PAGES = ("/api/", "/files/", "/static/", "/runs/file/", "/runs/compare/plot/")
#: The answer to a request while the data folder or database is unusable (status 503).
STORAGE_UNUSABLE = "the server cannot store or read uploads now (its data folder is unusable); try again later"


class ApiError(Exception):
    """An HTTP error with a one-line message, answered as ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def wants_page(scope: dict[str, Any]) -> bool:
    """Whether an error should be answered as a page: a browser (Accept: text/html) asking for
    one of the pages, not the API or a file."""
    path, accept = scope.get("path", ""), Headers(scope=scope).get("accept", "")
    return scope.get("method") in ("GET", "HEAD") and "text/html" in accept and not path.startswith(NOT_PAGES)


class ErrorAnswers:
    """Builds the answer to an error: ``error.html`` (naming ``model_name``) for a page, else JSON."""

    def __init__(self, templates: Jinja2Templates, model_name: str) -> None:
        self.templates = templates
        self.model_name = model_name

    def answer(self, scope: dict[str, Any], status: int, message: str) -> tuple[int, list, bytes]:
        """An error as (status, headers, body bytes): a page for a browser asking for a page, else JSON."""
        if wants_page(scope):
            body = self.templates.get_template("error.html").render(status=status, message=message,
                                                                    model=self.model_name)
            return status, [(b"content-type", b"text/html; charset=utf-8")], body.encode()
        return status, [(b"content-type", b"application/json")], json.dumps({"error": message}).encode()

    def response(self, request: Request, status: int, message: str) -> Response:
        """:meth:`answer` as a response to ``request``."""
        status, headers, body = self.answer(request.scope, status, message)
        return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


def validation_message(exc: RequestValidationError) -> str:
    """The first validation error as one line, ``<field>: <what is wrong>`` (``request: ...``
    when it names no field)."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(clipped(str(p)) for p in first.get("loc", ()) if p not in ("body", "path", "query"))
    return f"{where or 'request'}: {first.get('msg', 'invalid')}"


def install_error_handlers(app: FastAPI, answers: ErrorAnswers, too_large: str, data_dir: str) -> None:
    """Answer ``ApiError``, Starlette's HTTP errors (``too_large`` for a body over the upload
    limit), validation errors (422) and ``StorageError`` (503, logged with ``data_dir``) as one line."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return answers.response(request, exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc, BodyTooLarge):  # the upload's body crossed the limit while it streamed in
            return answers.response(request, 413, too_large)
        return answers.response(request, exc.status_code, "not found" if exc.status_code == 404 else str(exc.detail))

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> Response:
        log.warning("%s %s: storage: %s (serve.data_dir=%s)", request.method, request.url.path, exc, data_dir)
        return answers.response(request, 503, STORAGE_UNUSABLE)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return answers.response(request, 422, validation_message(exc))
