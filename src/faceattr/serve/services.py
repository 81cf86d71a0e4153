"""The web app's services, built once from ``cfg.serve`` and shared by every route.

:class:`Services` holds them: the store (``store.py``), request access (``access.py``), the
uploads (``uploads.py``), the retrain jobs (``jobs.py``, ``retrain.py``), the runs browser and
its comparisons (``runs.py``) and the page templates. A route reaches them through
:func:`services_of` (a FastAPI dependency), so the routes hold no state of their own.
:func:`keep_purging` deletes old uploads now and every hour.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from omegaconf import DictConfig

from faceattr.inference.pipeline import FacePipeline
from faceattr.serve.access import Access
from faceattr.serve.jobs import JobRunner
from faceattr.serve.retrain import Retrains
from faceattr.serve.runs import Comparisons, RunsBrowser
from faceattr.serve.sessions import Sessions
from faceattr.serve.store import Store
from faceattr.serve.uploads import Uploads

log = logging.getLogger("faceattr.serve.app")  # the app's log, as before the routes were split out

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PURGE_EVERY_S = 3600.0


@dataclass
class Services:
    """What the routes call. ``model_name``: the served model as pages and ``/api/health`` name
    it; ``data_dir``: ``serve.data_dir``; ``max_upload_mb``: ``serve.max_upload_mb``."""

    store: Store
    access: Access
    uploads: Uploads
    jobs: JobRunner
    retrains: Retrains
    browser: RunsBrowser
    comparisons: Comparisons
    templates: Jinja2Templates
    model_name: str
    data_dir: str
    max_upload_mb: float


def build_services(cfg: DictConfig, pipeline: FacePipeline, served: Path, store: Store) -> Services:
    """The services over ``pipeline``, ``cfg.serve`` and ``store``; ``served``: the served model's
    folder (resolved), what retrain jobs start from. Starts the retrain jobs' thread."""
    serve = cfg.serve
    jobs = JobRunner(store, cfg, served)
    browser = RunsBrowser([str(r) for r in serve.runs_roots], exclude=[str(serve.data_dir)])
    max_bytes = int(float(serve.max_upload_mb) * 2**20)
    model_type = pipeline.predictor.info.model_type if pipeline.predictor.info else "model"
    return Services(
        store=store, access=Access(Sessions(store.secret()), float(serve.retention_hours) * 3600.0),
        uploads=Uploads(store, pipeline, max_bytes, int(serve.max_pixels)), jobs=jobs,
        retrains=Retrains(store, jobs), browser=browser,
        comparisons=Comparisons(browser, Path(str(serve.data_dir)) / "compare"),
        templates=Jinja2Templates(directory=str(TEMPLATES_DIR)), model_name=f"{model_type} ({served})",
        data_dir=str(serve.data_dir), max_upload_mb=float(serve.max_upload_mb))


async def services_of(request: Request) -> Services:
    """The app's services (a FastAPI dependency: ``s: Svc`` in a route's parameters)."""
    return request.app.state.services


#: A route's parameter for the services.
Svc = Annotated[Services, Depends(services_of)]


def keep_purging(store: Store, retention_hours: float, stop: threading.Event) -> None:
    """Delete uploads older than ``retention_hours`` now and every hour until ``stop`` is set;
    a purge that fails is logged and tried again in an hour (run it on a thread of its own)."""
    while True:
        try:
            removed = store.purge(retention_hours * 3600.0)
            if removed:
                log.info("deleted %d uploads older than %g h", removed, retention_hours)
        except Exception as exc:  # a purge that fails is tried again in an hour
            log.warning("purging old uploads failed: %s", exc)
        if stop.wait(PURGE_EVERY_S):
            return
