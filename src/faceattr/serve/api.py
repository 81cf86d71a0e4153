"""The JSON API under ``/api/``, what the page uses (README.md lists its routes and errors).

Each route checks who asks (``access.py``: a session, and the CSRF header on every POST/PUT)
and that storage is usable (else 503), then calls a service: ``uploads.py`` (photos, faces,
corrections), ``retrain.py`` (jobs) or the runs browser. Errors are ``{"error": "<one line>"}``
(``errors.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from faceattr.serve.errors import ApiError
from faceattr.serve.jobs import JobBusy
from faceattr.serve.services import Services, Svc
from faceattr.serve.uploads import upload_json, validate_label

log = logging.getLogger("faceattr.serve.app")  # the app's log, as before the routes were split out

router = APIRouter()


def own_upload(s: Services, request: Request, upload_id: str) -> tuple[str, dict[str, Any]]:
    """(session id, upload) of the request's session; 503 when storage is unusable, else 404."""
    s.store.check_usable()
    sid = s.access.need_session(request)
    return sid, s.uploads.owned(sid, upload_id)


@router.get("/api/health")
def health(s: Svc) -> JSONResponse:
    """200 while the data folder and database can be written; 503 naming the problem otherwise."""
    problem = s.store.health()
    if problem:
        log.warning("health: %s (serve.data_dir=%s)", problem, s.data_dir)
        return JSONResponse({"status": "unavailable", "problem": problem, "model": s.model_name}, status_code=503)
    return JSONResponse({"status": "ok", "model": s.model_name})


@router.get("/api/session")
def session(request: Request, s: Svc) -> JSONResponse:
    """The request's CSRF token, for a new session (its cookie set) when it has none."""
    sid, cookie = s.access.session_or_new(request)
    response = JSONResponse({"csrf": s.access.csrf(sid)})
    if cookie is not None:
        s.access.set_cookie(response, cookie)
    return response


@router.post("/api/uploads", status_code=201)  # its body is bounded as it streams in (guards.UploadLimit)
def upload(request: Request, s: Svc, image: UploadFile = File(...)) -> JSONResponse:
    sid = s.access.need_csrf(request)
    s.store.check_usable()
    name = Path(image.filename or "upload").name or "upload"
    data = image.file.read(s.uploads.max_bytes + 1)
    return JSONResponse(s.uploads.add(sid, name, data), status_code=201)


@router.get("/api/uploads")
def uploads(request: Request, s: Svc) -> dict[str, Any]:
    s.store.check_usable()
    return {"uploads": s.uploads.listing(s.access.session_of(request))}


@router.get("/api/uploads/{upload_id}")
def get_upload(request: Request, upload_id: str, s: Svc) -> dict[str, Any]:
    _, up = own_upload(s, request, upload_id)
    return upload_json(up, True)


@router.put("/api/uploads/{upload_id}/faces/{index}/label")
async def label(request: Request, upload_id: str, index: str, s: Svc) -> dict[str, Any]:
    sid = s.access.need_csrf(request)
    _, up = own_upload(s, request, upload_id)
    face = s.uploads.face_index(up, index)
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(422, "body: not JSON") from None
    return await run_in_threadpool(s.uploads.correct, sid, up, face, validate_label(body))


@router.get("/api/corrections.csv")
def corrections_csv(request: Request, s: Svc) -> Response:
    s.store.check_usable()
    text = s.uploads.corrections_csv(s.access.session_of(request))
    return PlainTextResponse(text, media_type="text/csv",
                             headers={"Content-Disposition": 'attachment; filename="labels.csv"'})


@router.post("/api/retrain", status_code=202)
def retrain(request: Request, s: Svc) -> JSONResponse:
    sid = s.access.need_csrf(request)
    s.store.check_usable()
    try:
        job = s.retrains.start(sid)
    except JobBusy as exc:
        return JSONResponse({"error": str(exc), "job": exc.job}, status_code=409)
    return JSONResponse({"job": job}, status_code=202)


@router.get("/api/jobs/current")
def current_job(request: Request, s: Svc) -> dict[str, Any]:
    """The session's latest retrain job (running or finished), so a reloaded page shows it."""
    s.store.check_usable()
    return s.retrains.current(s.access.session_of(request))


@router.get("/api/jobs/{job}")
def job_state(request: Request, job: str, s: Svc) -> dict[str, Any]:
    s.store.check_usable()
    return s.retrains.state(s.access.need_session(request), job)


@router.get("/api/runs")
def runs(s: Svc) -> dict[str, Any]:
    return {"runs": [r.as_dict() for r in s.browser.runs()]}
