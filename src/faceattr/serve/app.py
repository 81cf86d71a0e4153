"""``python src/main.py serve``: the local web app (FastAPI + uvicorn, Jinja2 pages, plain JS).

:func:`create_app` composes it: the services (``services.py``: storage, sessions, uploads,
retrain jobs, the runs browser), the routes over them (``pages.py``: the HTML pages; ``api.py``:
the JSON API under ``/api/``, what the page uses, its routes and errors listed in README.md;
``files.py``: stored images and run files), the error answers (``errors.py``) and the guards.

Sessions (``sessions.py``, ``access.py``): a signed random HttpOnly, SameSite=Lax cookie; each
has a CSRF token (``GET /api/session``) that every POST/PUT must send as ``X-CSRF-Token`` (else
403); nothing is stored for a session before its first upload. An upload, its files and jobs
are visible to their session only (others get 404). Errors are JSON ``{"error": "<one line>"}``
(a page for a browser asking for a page); nothing a request does can stop the server. The
outer guards (``guards.py``) check the Host header, bound uploads and add security headers.
The model is loaded once, at start.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import NoReturn

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from omegaconf import DictConfig

from faceattr.errors import InputError
from faceattr.inference.pipeline import FacePipeline
from faceattr.serve import api, files, pages
from faceattr.serve.errors import ErrorAnswers, install_error_handlers
from faceattr.serve.guards import Guard, UploadLimit, allowed_hosts
from faceattr.serve.services import Services, build_services, keep_purging
from faceattr.serve.store import Store

HERE = Path(__file__).resolve().parent
MULTIPART_SLACK = 64 * 1024  # bytes of multipart framing allowed above serve.max_upload_mb


def create_app(cfg: DictConfig, pipeline: FacePipeline, served: Path | None = None,
               store: Store | None = None, on_start: Callable[[], None] | None = None) -> FastAPI:
    """The web app over ``pipeline`` (the loaded model and detector) and ``cfg.serve``.

    ``served``: the served model's folder (what retrain jobs start from; default: the
    pipeline's model). ``store``: opened already (default: opened here on ``serve.data_dir``;
    ``StorageError`` when it can't be used). ``on_start``: called once the server has started
    (its signal handlers installed), e.g. to say it is serving. Purges old uploads now and every hour.
    """
    serve = cfg.serve
    store = store or Store(str(serve.data_dir))
    services = build_services(cfg, pipeline, Path(served or pipeline.predictor.path or ".").resolve(), store)
    stop = threading.Event()
    app = FastAPI(title="faceattr", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=_lifespan(services, stop, on_start))
    app.state.services, app.state.stop = services, stop
    app.state.store, app.state.jobs, app.state.browser = services.store, services.jobs, services.browser
    threading.Thread(target=keep_purging, args=(store, float(serve.retention_hours), stop), name="faceattr-purge",
                     daemon=True).start()
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for routes in (api.router, files.router, pages.router):  # in this order: the first route that matches answers
        app.include_router(routes)
    too_large = f"upload: over the limit of {float(serve.max_upload_mb):g} MB"
    app.add_middleware(UploadLimit, paths=("/api/uploads",),
                       max_bytes=services.uploads.max_bytes + MULTIPART_SLACK, message=too_large)
    answers = ErrorAnswers(services.templates, services.model_name)
    install_error_handlers(app, answers, too_large, services.data_dir)
    hosts, any_address = allowed_hosts(str(serve.host), [str(h) for h in serve.allowed_hosts])
    app.add_middleware(Guard, hosts=hosts, any_address=any_address, error=answers.answer)  # last: outermost
    return app


def _lifespan(services: Services, stop: threading.Event, on_start: Callable[[], None] | None = None,
              ) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: ``on_start`` once the server runs; when it stops, the purge thread ends
    and a running retrain subprocess too."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_start is not None:
            on_start()
        yield
        stop.set()
        services.jobs.stop()

    return lifespan


def serving_pipeline(cfg: DictConfig) -> FacePipeline:
    """The pipeline ``serve`` answers with: ``run``'s detector and model, warmed up, mirror
    averaging as ``serve.tta_flip`` says. An interactive page goes without it by default: half
    the model's work per face (docs/serve.md has the load figures both ways and the accuracy)."""
    pipeline = FacePipeline.from_config(cfg)
    pipeline.predictor.tta_flip = bool(cfg.serve.tta_flip)
    pipeline.predictor.warmup()
    return pipeline


def run_server(cfg: DictConfig) -> NoReturn:
    """The ``serve`` command's work: load the model once, then serve until Ctrl-C (or another
    signal), which ends it as ``KeyboardInterrupt`` (the CLI's "interrupted", exit code 130)."""
    import uvicorn  # deferred: uvicorn, only when the server starts

    serve = cfg.serve
    host, port = str(serve.host), int(serve.port)
    try:  # bound before the model loads: a busy port is one line, not a minute's wait
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until the server accepts them
    except OSError as exc:
        raise InputError(f"serve.host={host} serve.port={port}: cannot listen there ({exc.strerror or exc})") from None
    store = Store(str(serve.data_dir))  # a data folder that can't be written: one line before the model loads
    print(f"Loading the model (model_path={cfg.model_path or 'the shipped ' + str(cfg.model.name)}) ...", flush=True)
    pipeline = serving_pipeline(cfg)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    def announce() -> None:
        # Said from the app's startup, when uvicorn's signal handlers are in place: a Ctrl-C
        # after this line always stops the server (before them, one could be lost).
        print(f"Serving on http://{shown}:{bound}/ (data in {serve.data_dir}; Ctrl-C to stop)", flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: serve.host={host} is reachable from other machines; the app has no accounts",
                  file=sys.stderr, flush=True)

    app = create_app(cfg, pipeline, store=store, on_start=announce)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            timeout_keep_alive=30)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    # The server only stops on a signal (Ctrl-C, kill): always the CLI's "interrupted" and exit
    # 130, whether or not uvicorn raised the signal again after its shutdown.
    raise KeyboardInterrupt
