"""``python src/main.py serve``: the local web app (FastAPI + uvicorn, Jinja2 pages, plain JS).

Pages: ``/`` (upload a photo, see and correct every face, retrain), ``/runs`` (runs and
sweeps with their key figures), ``/runs/view/<name>`` (one run's plots and reports) and
``/runs/compare?run=A&run=B`` (the ``compare`` table and plot). The JSON API under ``/api/``
is what the page uses; its routes and errors are listed in README.md.

Sessions (``sessions.py``): a signed random HttpOnly, SameSite=Lax cookie; each has a CSRF
token (``GET /api/session``) that every POST/PUT must send as ``X-CSRF-Token`` (else 403);
nothing is stored for a session before its first upload. An upload, its files and jobs are
visible to their session only (others get 404). Errors are JSON ``{"error": "<one line>"}``
(a page for a browser asking for a page); nothing a request does can stop the server. The
outer guards (``guards.py``) check the Host header, bound uploads and add security headers.
The model is loaded once, at start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import socket
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from omegaconf import DictConfig
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from faceattr.errors import FaceAttrError, InputError
from faceattr.inference.pipeline import FacePipeline
from faceattr.labels import AGE_RANGE, GENDERS, RACES
from faceattr.serve.guards import BodyTooLarge, Guard, UploadLimit, allowed_hosts, clipped, shown
from faceattr.serve.jobs import JobBusy, JobRunner, correction_rows, labels_csv
from faceattr.serve.photos import TooLarge, check_upload, correct_face, process_upload
from faceattr.serve.runs import RunsBrowser, compare
from faceattr.serve.sessions import Sessions
from faceattr.serve.store import UPLOAD_ID, StorageError, Store, new_id

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "faceattr_session"
CSRF_HEADER = "X-CSRF-Token"
MULTIPART_SLACK = 64 * 1024  # bytes of multipart framing allowed above serve.max_upload_mb
PURGE_EVERY_S = 3600.0


class ApiError(Exception):
    """An HTTP error with a one-line message, answered as ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


#: Route prefixes that answer files or JSON, never a page (their errors are JSON too).
NOT_PAGES = ("/api/", "/files/", "/static/", "/runs/file/", "/runs/compare/plot/")


def wants_page(scope: dict[str, Any]) -> bool:
    """Whether an error should be answered as a page: a browser (Accept: text/html) asking for
    one of the pages, not the API or a file."""
    path, accept = scope.get("path", ""), Headers(scope=scope).get("accept", "")
    return scope.get("method") in ("GET", "HEAD") and "text/html" in accept and not path.startswith(NOT_PAGES)


def validate_label(body: Any) -> dict[str, Any]:
    """A correction ``{"age": int, "gender": ..., "race": ...}`` (any non-empty subset; ``null``
    clears that field's correction), checked; raises ``ApiError(422)`` naming the field at fault."""
    if not isinstance(body, dict) or not body:
        raise ApiError(422, "body: expected a JSON object with one or more of age, gender, race")
    unknown = sorted(set(body) - {"age", "gender", "race"})
    if unknown:
        raise ApiError(422, f"{clipped(str(unknown[0]))}: unknown field (expected age, gender or race)")
    out: dict[str, Any] = {}
    if "age" in body and body["age"] is None:
        out["age"] = None
    elif "age" in body:
        age = body["age"]
        if isinstance(age, bool) or not isinstance(age, int) or not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
            raise ApiError(422, f"age: {shown(age)} is not allowed: expected a whole number of years from "
                                f"{AGE_RANGE[0]:g} to {AGE_RANGE[1]:g}")
        out["age"] = int(age)
    for key, names in (("gender", GENDERS), ("race", RACES)):
        if key in body and body[key] is None:
            out[key] = None
        elif key in body:
            if body[key] not in names:
                raise ApiError(422, f"{key}: {shown(body[key])} is not allowed: expected one of {', '.join(names)}")
            out[key] = body[key]
    return out


def create_app(cfg: DictConfig, pipeline: FacePipeline, served: Path | None = None,
               store: Store | None = None) -> FastAPI:
    """The web app over ``pipeline`` (the loaded model and detector) and ``cfg.serve``.

    ``served``: the served model's folder (what retrain jobs start from; default: the
    pipeline's model). ``store``: opened already (default: opened here on ``serve.data_dir``;
    ``StorageError`` when it can't be used). Purges old uploads now and every hour.
    """
    serve = cfg.serve
    store = store or Store(str(serve.data_dir))
    served = Path(served or pipeline.predictor.path or ".").resolve()
    jobs = JobRunner(store, cfg, served)
    sessions = Sessions(store.secret())
    browser = RunsBrowser([str(r) for r in serve.runs_roots], exclude=[str(serve.data_dir)])
    max_bytes = int(float(serve.max_upload_mb) * 2**20)
    max_pixels = int(serve.max_pixels)
    retention_s = float(serve.retention_hours) * 3600.0
    model_name = f"{pipeline.predictor.info.model_type if pipeline.predictor.info else 'model'} ({served})"
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    stop = threading.Event()

    def purge_loop() -> None:
        while True:
            try:
                removed = store.purge(retention_s)
                if removed:
                    log.info("deleted %d uploads older than %g h", removed, float(serve.retention_hours))
            except Exception as exc:  # a purge that fails is tried again in an hour
                log.warning("purging old uploads failed: %s", exc)
            if stop.wait(PURGE_EVERY_S):
                return

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        stop.set()  # the server stops: the purge thread ends, a running retrain subprocess too
        jobs.stop()

    app = FastAPI(title="faceattr", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store, app.state.jobs, app.state.browser, app.state.stop = store, jobs, browser, stop
    threading.Thread(target=purge_loop, name="faceattr-purge", daemon=True).start()
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    too_large = f"upload: over the limit of {float(serve.max_upload_mb):g} MB"
    app.add_middleware(UploadLimit, paths=("/api/uploads",), max_bytes=max_bytes + MULTIPART_SLACK,
                       message=too_large)

    # -- plumbing ------------------------------------------------------------------------
    def error_answer(scope: dict[str, Any], status: int, message: str) -> tuple[int, list, bytes]:
        """An error as (status, headers, body): a page for a browser asking for a page, else JSON."""
        if wants_page(scope):
            body = templates.get_template("error.html").render(status=status, message=message, model=model_name)
            return status, [(b"content-type", b"text/html; charset=utf-8")], body.encode()
        return status, [(b"content-type", b"application/json")], json.dumps({"error": message}).encode()

    def error_response(request: Request, status: int, message: str) -> Response:
        status, headers, body = error_answer(request.scope, status, message)
        return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})

    hosts, any_address = allowed_hosts(str(serve.host), [str(h) for h in serve.allowed_hosts])
    app.add_middleware(Guard, hosts=hosts, any_address=any_address, error=error_answer)  # last: outermost

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request, exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc, BodyTooLarge):  # the upload's body crossed the limit while it streamed in
            return error_response(request, 413, too_large)
        return error_response(request, exc.status_code, "not found" if exc.status_code == 404 else str(exc.detail))

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> Response:
        log.warning("%s %s: storage: %s (serve.data_dir=%s)", request.method, request.url.path, exc, serve.data_dir)
        return error_response(request, 503, "the server cannot store or read uploads now (its data folder is "
                                            "unusable); try again later")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(clipped(str(p)) for p in first.get("loc", ()) if p not in ("body", "path", "query"))
        return error_response(request, 422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    def usable() -> None:
        """Raise ``StorageError`` (503) unless the data folder and database are still in place."""
        problem = store.problem()
        if problem:
            raise StorageError(problem)

    def session_of(request: Request) -> str | None:
        return sessions.session_of(request.cookies.get(COOKIE))

    def need_session(request: Request) -> str:
        sid = session_of(request)
        if sid is None:
            raise ApiError(404, "not found")
        return sid

    def need_csrf(request: Request) -> str:
        sid = session_of(request)
        if sid is None or not sessions.csrf_ok(sid, request.headers.get(CSRF_HEADER, "")):
            raise ApiError(403, f"missing or wrong {CSRF_HEADER} header (GET /api/session gives it)")
        return sid

    def set_cookie(response: Response, cookie: str) -> None:
        """The session cookie, kept by the browser as long as the session's uploads are kept."""
        response.set_cookie(COOKIE, cookie, max_age=int(retention_s), httponly=True, samesite="lax", path="/")

    def upload_json(up: dict[str, Any], with_corrections: bool) -> dict[str, Any]:
        out = {"id": up["id"], "image_url": f"/files/{up['annotated']}", "width": up["width"],
               "height": up["height"],
               "faces": [{"index": f.index, "box": list(f.box), "age": f.age, "gender": f.gender, "race": f.race,
                          "gender_confidence": f.gender_confidence, "race_confidence": f.race_confidence,
                          "aligned": f.aligned, "crop_url": f"/files/{f.crop}"} for f in up["faces"]]}
        if with_corrections:
            out["corrections"] = {str(k): v for k, v in up["corrections"].items()}
        return out

    def own_upload(request: Request, upload_id: str) -> tuple[str, dict[str, Any]]:
        usable()
        sid = need_session(request)
        up = store.upload(sid, upload_id) if UPLOAD_ID.fullmatch(upload_id) else None
        if up is None:
            raise ApiError(404, f"upload {clipped(upload_id)}: not found")
        return sid, up

    # -- the JSON API --------------------------------------------------------------------
    @app.get("/api/health")
    def health() -> JSONResponse:
        """200 while the data folder and database can be written; 503 naming the problem otherwise."""
        problem = store.health()
        if problem:
            log.warning("health: %s (serve.data_dir=%s)", problem, serve.data_dir)
            return JSONResponse({"status": "unavailable", "problem": problem, "model": model_name}, status_code=503)
        return JSONResponse({"status": "ok", "model": model_name})

    @app.get("/api/session")
    def session(request: Request) -> JSONResponse:
        sid = session_of(request)
        if sid is None:  # nothing stored until the session uploads
            sid, cookie = sessions.new()
            response = JSONResponse({"csrf": sessions.csrf(sid)})
            set_cookie(response, cookie)
            return response
        return JSONResponse({"csrf": sessions.csrf(sid)})

    @app.post("/api/uploads", status_code=201)  # its body is bounded as it streams in (UploadLimit)
    def upload(request: Request, image: UploadFile = File(...)) -> JSONResponse:
        sid = need_csrf(request)
        usable()
        name = Path(image.filename or "upload").name or "upload"
        data = image.file.read(max_bytes + 1)
        try:
            check_upload(data, name, max_bytes, max_pixels)
        except TooLarge as exc:
            raise ApiError(413, str(exc)) from None
        except InputError as exc:
            raise ApiError(422, str(exc)) from None
        upload_id = new_id()
        try:
            process_upload(store, pipeline, sid, upload_id, data, name)
        except StorageError:
            raise
        except FaceAttrError as exc:
            raise ApiError(422, str(exc)) from None
        up = store.upload(sid, upload_id)
        assert up is not None
        return JSONResponse(upload_json(up, False), status_code=201)

    @app.get("/api/uploads")
    def uploads(request: Request) -> dict[str, Any]:
        usable()
        sid = session_of(request)
        return {"uploads": store.uploads(sid) if sid else []}

    @app.get("/api/uploads/{upload_id}")
    def get_upload(request: Request, upload_id: str) -> dict[str, Any]:
        _, up = own_upload(request, upload_id)
        return upload_json(up, True)

    @app.put("/api/uploads/{upload_id}/faces/{index}/label")
    async def label(request: Request, upload_id: str, index: str) -> dict[str, Any]:
        sid = need_csrf(request)
        _, up = own_upload(request, upload_id)
        if not re.fullmatch(r"[0-9]{1,6}", index) or int(index) >= len(up["faces"]):
            raise ApiError(404, f"upload {upload_id}: no face {clipped(index)}")
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(422, "body: not JSON") from None
        values = validate_label(body)
        fix = await run_in_threadpool(correct_face, store, sid, up, int(index), values)
        up = store.upload(sid, upload_id)
        if up is None:
            raise ApiError(404, f"upload {upload_id}: not found")
        return {"index": int(index), "correction": fix, **upload_json(up, True)}

    @app.get("/api/corrections.csv")
    def corrections_csv(request: Request) -> Response:
        usable()
        sid = session_of(request)
        text = labels_csv(correction_rows(store, sid) if sid else [])
        return PlainTextResponse(text, media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="labels.csv"'})

    @app.post("/api/retrain", status_code=202)
    def retrain(request: Request) -> JSONResponse:
        sid = need_csrf(request)
        usable()
        try:
            job = jobs.submit(sid)
        except JobBusy as exc:
            return JSONResponse({"error": str(exc), "job": exc.job}, status_code=409)
        except InputError as exc:
            raise ApiError(422, str(exc)) from None
        return JSONResponse({"job": job}, status_code=202)

    def job_json(row: dict[str, Any]) -> dict[str, Any]:
        return {"job": row["id"], "state": row["state"], "progress": row["progress"], "phase": row["phase"],
                "eta_s": row["eta_s"], "run_dir": row["run_dir"], "metrics": row["metrics"], "error": row["error"]}

    @app.get("/api/jobs/current")
    def current_job(request: Request) -> dict[str, Any]:
        """The session's latest retrain job (running or finished), so a reloaded page shows it."""
        usable()
        sid = session_of(request)
        row = store.latest_job(sid) if sid else None
        return job_json(row) if row else {"job": None}

    @app.get("/api/jobs/{job}")
    def job_state(request: Request, job: str) -> dict[str, Any]:
        usable()
        sid = need_session(request)
        row = store.job(sid, job) if UPLOAD_ID.fullmatch(job) else None
        if row is None:
            raise ApiError(404, f"job {clipped(job)}: not found")
        return job_json(row)

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        return {"runs": [r.as_dict() for r in browser.runs()]}

    # -- files ---------------------------------------------------------------------------
    @app.get("/files/{name}")
    def files(request: Request, name: str) -> FileResponse:
        usable()
        sid = need_session(request)
        path = store.file_path(name)
        if path is None or not path.is_file() or not store.owns_file(sid, name):
            raise ApiError(404, "not found")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/runs/file/{name:path}")
    def run_file(name: str) -> FileResponse:
        path = browser.file(name)
        if path is None:
            raise ApiError(404, "not found")
        media = "text/plain; charset=utf-8" if path.suffix.lower() in (".log", ".yaml", ".md", ".txt") else None
        return FileResponse(path, media_type=media)

    @app.get("/runs/compare/plot/{key}.png")
    def compare_plot(key: str) -> FileResponse:
        path = Path(str(serve.data_dir)) / "compare" / key / "comparison.png"
        if not re.fullmatch(r"[0-9a-f]{40}", key) or not path.is_file():
            raise ApiError(404, "not found")
        return FileResponse(path)

    # -- pages ---------------------------------------------------------------------------
    def page(request: Request, template: str, **context: Any) -> HTMLResponse:
        response = templates.TemplateResponse(request, template, {"model": model_name, **context})
        if session_of(request) is None:
            set_cookie(response, sessions.new()[1])
        return response

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return page(request, "index.html", genders=GENDERS, races=RACES, max_upload_mb=float(serve.max_upload_mb))

    @app.get("/runs", response_class=HTMLResponse)
    def runs_page(request: Request) -> HTMLResponse:
        items = [r.as_dict() for r in browser.runs()]
        keys = ["age_mae", "gender_accuracy", "race_accuracy", "race_macro_f1"]
        return page(request, "runs.html", runs=items, keys=keys)

    @app.get("/runs/view/{name:path}", response_class=HTMLResponse)
    def run_page(request: Request, name: str) -> HTMLResponse:
        run = browser.run(name)
        if run is None:
            raise ApiError(404, "not found")
        return page(request, "run.html", run=run.as_dict(), files=run.files())

    @app.get("/runs/compare", response_class=HTMLResponse)
    def compare_page(request: Request) -> HTMLResponse:
        names = request.query_params.getlist("run")
        chosen = [r for r in (browser.run(n) for n in names) if r is not None]
        if len(chosen) < 2:
            raise ApiError(404, "compare: choose two or more runs that exist")
        key = hashlib.sha1("\n".join(sorted(r.name for r in chosen)).encode()).hexdigest()
        result = compare(chosen, Path(str(serve.data_dir)) / "compare" / key)
        plot = f"/runs/compare/plot/{key}.png" if result["plot"] else None
        return page(request, "compare.html", table=result, plot=plot, names=[r.name for r in chosen])

    return app


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
    app = create_app(cfg, pipeline, store=store)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"Serving on http://{shown}:{bound}/ (data in {serve.data_dir}; Ctrl-C to stop)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serve.host={host} is reachable from other machines; the app has no accounts",
              file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            timeout_keep_alive=30)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    # The server only stops on a signal (Ctrl-C, kill): always the CLI's "interrupted" and exit
    # 130, whether or not uvicorn raised the signal again after its shutdown.
    raise KeyboardInterrupt
