"""The app's HTML pages (Jinja2 templates in ``templates/``): ``/`` (upload a photo, see and
correct every face, retrain), ``/runs`` (runs and sweeps with their key figures),
``/runs/view/<name>`` (one run's plots and reports) and ``/runs/compare?run=A&run=B`` (the
``compare`` table and plot). A page gives a visitor without a session a new session cookie."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from faceattr.labels import GENDERS, RACES
from faceattr.serve.errors import ApiError
from faceattr.serve.services import Services, Svc

#: The figures (``metrics.json`` keys) the runs page shows for each run.
RUN_KEYS = ["age_mae", "gender_accuracy", "race_accuracy", "race_macro_f1"]

router = APIRouter()


def page(s: Services, request: Request, template: str, **context: Any) -> HTMLResponse:
    """``template`` rendered with ``context`` and the served model's name; a new session's
    cookie set when the request has none."""
    response = s.templates.TemplateResponse(request, template, {"model": s.model_name, **context})
    _, cookie = s.access.session_or_new(request)
    if cookie is not None:
        s.access.set_cookie(response, cookie)
    return response


@router.get("/", response_class=HTMLResponse)
def index(request: Request, s: Svc) -> HTMLResponse:
    return page(s, request, "index.html", genders=GENDERS, races=RACES, max_upload_mb=s.max_upload_mb)


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request, s: Svc) -> HTMLResponse:
    return page(s, request, "runs.html", runs=[r.as_dict() for r in s.browser.runs()], keys=RUN_KEYS)


@router.get("/runs/view/{name:path}", response_class=HTMLResponse)
def run_page(request: Request, name: str, s: Svc) -> HTMLResponse:
    run = s.browser.run(name)
    if run is None:
        raise ApiError(404, "not found")
    return page(s, request, "run.html", run=run.as_dict(), files=run.files())


@router.get("/runs/compare", response_class=HTMLResponse)
def compare_page(request: Request, s: Svc) -> HTMLResponse:
    return page(s, request, "compare.html", **s.comparisons.compare(request.query_params.getlist("run")))
