"""The app's file routes: a session's stored images (``/files/<name>``), a run's plots and
reports (``/runs/file/<run>/<file>``) and a comparison's plot (``/runs/compare/plot/<key>.png``).
Anything else, or another session's file, is 404."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from faceattr.serve.errors import ApiError
from faceattr.serve.services import Svc

#: Suffixes of text files served as UTF-8 text (a browser shows them instead of downloading).
TEXT_SUFFIXES = (".log", ".yaml", ".md", ".txt")

router = APIRouter()


@router.get("/files/{name}")
def files(request: Request, name: str, s: Svc) -> FileResponse:
    s.store.check_usable()
    sid = s.access.need_session(request)
    path = s.store.file_path(name)
    if path is None or not path.is_file() or not s.store.owns_file(sid, name):
        raise ApiError(404, "not found")
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/runs/file/{name:path}")
def run_file(name: str, s: Svc) -> FileResponse:
    path = s.browser.file(name)
    if path is None:
        raise ApiError(404, "not found")
    return FileResponse(path, media_type="text/plain; charset=utf-8" if path.suffix.lower() in TEXT_SUFFIXES else None)


@router.get("/runs/compare/plot/{key}.png")
def compare_plot(key: str, s: Svc) -> FileResponse:
    path = s.comparisons.plot(key)
    if path is None:
        raise ApiError(404, "not found")
    return FileResponse(path)
