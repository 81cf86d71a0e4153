"""The web app's JSON API, pages and file routes (``faceattr.serve``), with the shipped CNN.

Every route and error of the API: sessions and CSRF, uploads (faces, no face, non-images,
truncated files, too many bytes, too many pixels from the header alone), corrections (one
field at a time, out-of-range values), isolation between sessions, the corrections export,
the runs browser (list, run page, compare) and path tricks, through FastAPI's TestClient and
once through real HTTP against uvicorn.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import sqlite3
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import default_sigint

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
MODEL = ROOT / "saved_model" / "cnn"


@pytest.fixture(scope="module")
def pipeline():
    """The shipped CNN (its TensorFlow Lite file) behind MTCNN, as ``serve`` loads it, once for the module."""
    from faceattr.config import compose_config
    from faceattr.serve.app import serving_pipeline

    return serving_pipeline(compose_config(["command=serve", "model=cnn"]))


def test_serve_answers_without_mirror_averaging_unless_asked(pipeline):
    """``serve.tta_flip`` (default false): the page's predictions are ``run``'s with ``run.tta_flip=false``."""
    import cv2

    from faceattr.config import compose_config
    from faceattr.inference.pipeline import FacePipeline
    from faceattr.serve.app import serving_pipeline

    photo = cv2.imread(str(ASTRONAUT))
    crops = pipeline.crops(photo)
    assert len(crops) == 1 and pipeline.predictor.tta_flip is False
    served = pipeline.predict(crops)[0]
    run_like = FacePipeline.from_config(compose_config(["command=run", "model=cnn", "run.tta_flip=false"]))
    assert abs(run_like.predict(crops)[0].age - served.age) < 1e-4
    mirrored = serving_pipeline(compose_config(["command=serve", "model=cnn", "serve.tta_flip=true"]))
    assert mirrored.predictor.tta_flip is True
    assert abs(mirrored.predict(crops)[0].age - served.age) > 1e-4  # the mirror image's answer is averaged in


def make_app(tmp: Path, pipeline, *overrides: str):
    from faceattr.config import compose_config
    from faceattr.serve.app import create_app

    runs = tmp / "runs"
    (runs / "outputs").mkdir(parents=True, exist_ok=True)
    cfg = compose_config(["command=serve", "model=cnn", f"serve.data_dir={tmp / 'runs' / 'outputs' / 'serve'}",
                          f"serve.runs_roots=[{runs / 'outputs'},{ROOT / 'statistics'}]",
                          f"serve.retrain_dir={tmp / 'retrain'}", f"paths.cache={tmp / 'cache'}",
                          "serve.allowed_hosts=[testserver]", *overrides])  # TestClient's Host
    return create_app(cfg, pipeline, served=MODEL), cfg


@pytest.fixture(scope="module")
def served(tmp_path_factory, pipeline):
    tmp = tmp_path_factory.mktemp("serve")
    app, cfg = make_app(tmp, pipeline)
    return app, cfg, tmp


def client_of(app) -> tuple[TestClient, str]:
    client = TestClient(app)
    token = client.get("/api/session").json()["csrf"]
    return client, token


@pytest.fixture(scope="module")
def uploaded(served):
    """A client (session A) with the astronaut uploaded."""
    app, _, _ = served
    client, token = client_of(app)
    with ASTRONAUT.open("rb") as fh:
        res = client.post("/api/uploads", files={"image": ("my photo.jpg", fh, "image/jpeg")},
                          headers={"X-CSRF-Token": token})
    assert res.status_code == 201, res.text
    return client, token, res.json()


def post_image(client: TestClient, token: str | None, data: bytes, name: str = "x.jpg"):
    headers = {"X-CSRF-Token": token} if token is not None else {}
    return client.post("/api/uploads", files={"image": (name, data, "application/octet-stream")}, headers=headers)


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with one small compressed chunk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 65536, 9)  # a few bytes that would inflate into a huge image
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------- health, session

def test_health_names_the_model(served):
    res = TestClient(served[0]).get("/api/health")
    assert res.status_code == 200
    body = res.json()
    assert body["status"] == "ok" and "cnn" in body["model"]


def test_session_sets_an_httponly_lax_cookie_once(served):
    client = TestClient(served[0])
    res = client.get("/api/session")
    assert res.status_code == 200 and res.json()["csrf"]
    cookie = res.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    again = client.get("/api/session")
    assert "set-cookie" not in again.headers
    assert again.json()["csrf"] == res.json()["csrf"]


# ------------------------------------------------------------------------------------- uploads

def test_upload_finds_the_face_with_labels_and_files(uploaded):
    client, _, body = uploaded
    assert len(body["id"]) == 32 and body["image_url"].startswith("/files/")
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    assert face["index"] == 0 and len(face["box"]) == 4 and face["box"][2] > 40
    assert 1 <= face["age"] <= 116 and face["gender"] in ("male", "female") and face["race"] in (
        "white", "black", "asian", "indian", "others")
    assert 0.5 <= face["gender_confidence"] <= 1 and 0.2 <= face["race_confidence"] <= 1
    for url in (body["image_url"], face["crop_url"]):
        res = client.get(url)
        assert res.status_code == 200 and res.content[:3] == b"\xff\xd8\xff"
    crop = cv2.imdecode(np.frombuffer(client.get(face["crop_url"]).content, np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape[:2] == (64, 64)  # the model's input size: the face as the model saw it
    drawn = cv2.imdecode(np.frombuffer(client.get(body["image_url"]).content, np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(ASTRONAUT))
    x, y, w, h = face["box"]
    assert drawn.shape == original.shape
    # The box is drawn in run's green on the annotated copy: its left edge turned greener.
    edge, before = drawn[y + 5:y + h - 5, x].astype(int), original[y + 5:y + h - 5, x].astype(int)
    greenness = (edge[:, 1] - edge[:, [0, 2]].mean(axis=1)).mean()
    assert greenness > (before[:, 1] - before[:, [0, 2]].mean(axis=1)).mean() + 30


def test_files_are_named_by_random_ids_never_the_client_name(served, uploaded):
    _, _, tmp = served
    names = [p.name for p in (tmp / "runs" / "outputs" / "serve" / "files").iterdir()]
    assert names and not any("photo" in n for n in names)
    assert (tmp / "runs" / "outputs" / "serve" / "serve.sqlite3").is_file()


def test_a_photo_without_a_face_gives_no_faces(served):
    client, token = client_of(served[0])
    res = post_image(client, token, png_bytes(np.full((240, 320, 3), 127, np.uint8)), "wall.png")
    assert res.status_code == 201, res.text
    assert res.json()["faces"] == []


@pytest.mark.parametrize("data, words", [
    (b"this is not an image at all", "not an image"),
    (b"", "empty"),
])
def test_non_images_are_422_with_one_line(served, data, words):
    client, token = client_of(served[0])
    res = post_image(client, token, data, "notes.txt")
    assert res.status_code == 422
    error = res.json()["error"]
    assert words in error and "notes.txt" in error and "\n" not in error


def test_a_truncated_jpeg_is_422_naming_the_file(served):
    client, token = client_of(served[0])
    data = ASTRONAUT.read_bytes()
    res = post_image(client, token, data[: len(data) // 2], "cut.jpg")
    assert res.status_code == 422
    assert res.json()["error"].startswith("cut.jpg: truncated JPEG")
    assert str(served[2]) not in res.json()["error"]  # the server's own paths stay private


def test_too_many_bytes_is_413(served, pipeline, tmp_path):
    app, _ = make_app(tmp_path, pipeline, "serve.max_upload_mb=0.01")
    client, token = client_of(app)
    res = post_image(client, token, ASTRONAUT.read_bytes() + b"\0" * 200_000, "big.jpg")  # refused by its length
    assert res.status_code == 413 and "MB" in res.json()["error"]
    res = post_image(client, token, ASTRONAUT.read_bytes()[:12_000], "big.jpg")  # framing allowance: by its bytes
    assert res.status_code == 413 and "big.jpg" in res.json()["error"]


def test_a_decompression_bomb_is_refused_from_its_header(served):
    client, token = client_of(served[0])
    bomb = png_header_bomb(50_000, 50_000)  # 2.5 gigapixels, 100 bytes
    start = time.perf_counter()
    res = post_image(client, token, bomb, "bomb.png")
    assert time.perf_counter() - start < 2.0
    assert res.status_code == 422
    assert res.json()["error"] == "bomb.png: 2,500 megapixels is over the limit of 40 megapixels"
    res = post_image(client, token, png_header_bomb(8000, 6000), "48mp.png")  # over the 40 MP default
    assert res.status_code == 422 and "8000x6000" in res.json()["error"]


def test_max_pixels_is_a_setting(served, pipeline, tmp_path):
    app, _ = make_app(tmp_path, pipeline, "serve.max_pixels=100000")
    client, token = client_of(app)
    res = post_image(client, token, ASTRONAUT.read_bytes(), "a.jpg")  # 512 x 512
    assert res.status_code == 422 and "512x512" in res.json()["error"]


# ---------------------------------------------------------------------------------------- CSRF

def test_posts_and_puts_need_the_sessions_csrf_token(served, uploaded):
    app = served[0]
    client, token, body = uploaded
    data = ASTRONAUT.read_bytes()
    assert post_image(client, None, data).status_code == 403
    assert post_image(client, "wrong", data).status_code == 403
    _, other_token = client_of(app)
    assert post_image(client, other_token, data).status_code == 403  # another session's token
    url = f"/api/uploads/{body['id']}/faces/0/label"
    assert client.put(url, json={"age": 30}).status_code == 403
    assert client.post("/api/retrain").status_code == 403
    fresh = TestClient(app)  # no session at all
    res = fresh.post("/api/uploads", files={"image": ("a.jpg", data, "image/jpeg")}, headers={"X-CSRF-Token": token})
    assert res.status_code == 403 and "X-CSRF-Token" in res.json()["error"]


# --------------------------------------------------------------------------------- corrections

def test_corrections_are_stored_merged_and_shown(served, uploaded):
    client, token, body = uploaded
    url = f"/api/uploads/{body['id']}/faces/0/label"
    first = client.put(url, json={"gender": "male" if body["faces"][0]["gender"] == "female" else "female"},
                       headers={"X-CSRF-Token": token})
    assert first.status_code == 200, first.text
    res = client.put(url, json={"age": 41}, headers={"X-CSRF-Token": token})
    assert res.status_code == 200
    fix = res.json()["correction"]
    assert fix["age"] == 41 and fix["gender"] != body["faces"][0]["gender"]
    assert res.json()["image_url"] != body["image_url"]  # redrawn with the correction
    again = client.get(f"/api/uploads/{body['id']}")
    assert again.status_code == 200
    assert again.json()["corrections"] == {"0": fix}
    assert again.json()["faces"][0]["gender"] == body["faces"][0]["gender"]  # the prediction stays
    assert client.get(body["image_url"]).status_code == 404  # the old annotated copy is gone


@pytest.mark.parametrize("payload, field", [
    ({"age": 300}, "age"), ({"age": -1}, "age"), ({"age": "thirty"}, "age"), ({"age": 3.5}, "age"),
    ({"gender": "other"}, "gender"), ({"race": "martian"}, "race"), ({"height": 180}, "height"),
    ({}, "body"), ([1, 2], "body"),
])
def test_out_of_range_labels_are_422_naming_the_field(uploaded, payload, field):
    client, token, body = uploaded
    res = client.put(f"/api/uploads/{body['id']}/faces/0/label", json=payload, headers={"X-CSRF-Token": token})
    assert res.status_code == 422
    assert res.json()["error"].startswith(field)


def test_unknown_ids_and_faces_are_404(uploaded):
    client, token, body = uploaded
    for url in ("/api/uploads/" + "0" * 32, "/api/uploads/not-an-id", "/api/jobs/" + "0" * 32, "/api/jobs/x",
                "/files/" + "0" * 32 + ".jpg", "/files/serve.sqlite3", "/runs/view/statistics/nothing",
                "/runs/view/elsewhere/x", "/nowhere"):
        res = client.get(url)
        assert res.status_code == 404, url
        assert res.json() == {"error": "not found"} or "not found" in res.json()["error"]
    for index in ("1", "9", "-1", "x"):
        res = client.put(f"/api/uploads/{body['id']}/faces/{index}/label", json={"age": 3},
                         headers={"X-CSRF-Token": token})
        assert res.status_code == 404, index


# ---------------------------------------------------------------------------- session isolation

def test_another_session_can_neither_see_nor_correct_an_upload(served, uploaded):
    client, token, body = uploaded
    # Its own correction first: this test must not depend on another one having run before it.
    assert client.put(f"/api/uploads/{body['id']}/faces/0/label", json={"age": 41},
                      headers={"X-CSRF-Token": token}).status_code == 200
    other, other_token = client_of(served[0])
    assert other.get(f"/api/uploads/{body['id']}").status_code == 404
    res = other.put(f"/api/uploads/{body['id']}/faces/0/label", json={"age": 5},
                    headers={"X-CSRF-Token": other_token})
    assert res.status_code == 404
    assert other.get(body["faces"][0]["crop_url"]).status_code == 404
    assert other.get("/api/uploads").json()["uploads"] == []
    assert other.get("/api/corrections.csv").text.strip() == "file,age,gender,race"
    assert client.get(f"/api/uploads/{body['id']}").json()["corrections"]["0"]["age"] == 41


def test_corrections_csv_is_a_labels_file_training_can_read(served, uploaded, tmp_path):
    from faceattr.data.extra_labels import extra_training_rows
    from faceattr.data.labels_csv import read_labels

    client, token, body = uploaded
    client.put(f"/api/uploads/{body['id']}/faces/0/label", json={"race": "asian"}, headers={"X-CSRF-Token": token})
    res = client.get("/api/corrections.csv")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/csv")
    (tmp_path / "labels.csv").write_text(res.text)
    crop = client.get(body["faces"][0]["crop_url"]).content
    name = read_labels(tmp_path / "labels.csv")["file"].iloc[0]
    (tmp_path / name).write_bytes(crop)
    labels = read_labels(tmp_path / "labels.csv")
    assert len(labels) == 1 and labels["race"].iloc[0] == 2  # asian
    rows = extra_training_rows(tmp_path / "labels.csv", [0, 10, 20, 30, 40, 60, 80, float("inf")], copies=3)
    assert rows["split"].tolist() == ["train"] and rows["copies"].tolist() == [3]


def test_retrain_without_corrections_is_422(served):
    client, token = client_of(served[0])
    res = client.post("/api/retrain", headers={"X-CSRF-Token": token})
    assert res.status_code == 422 and "no corrections" in res.json()["error"]


# ------------------------------------------------------------------------------------ retention

def test_old_uploads_are_purged_with_their_files(served, pipeline, tmp_path):
    app, cfg = make_app(tmp_path, pipeline)
    client, token = client_of(app)
    body = post_image(client, token, ASTRONAUT.read_bytes(), "a.jpg").json()
    client.put(f"/api/uploads/{body['id']}/faces/0/label", json={"age": 9}, headers={"X-CSRF-Token": token})
    files = tmp_path / "runs" / "outputs" / "serve" / "files"
    assert len(list(files.iterdir())) == 3  # photo, annotated copy, crop
    store = app.state.store
    assert store.purge(3600.0) == 0  # not old yet
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE uploads SET created = created - 25 * 3600")
    assert store.purge(24 * 3600.0) == 1
    assert list(files.iterdir()) == []
    assert client.get(f"/api/uploads/{body['id']}").status_code == 404
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM corrections").fetchone()[0] == 0


# ------------------------------------------------------------------------------------ runs browser

def test_runs_lists_runs_with_their_figures(served):
    res = TestClient(served[0]).get("/api/runs")
    assert res.status_code == 200
    runs = {r["name"]: r for r in res.json()["runs"]}
    stats = runs["statistics/cnn"]
    assert stats["kind"] == "run" and stats["path"].endswith("statistics/cnn")
    assert 0 < stats["metrics"]["age_mae"] < 20 and stats["metrics"]["split"] == "test"
    assert runs["statistics"]["kind"] == "sweep"  # statistics/ holds a sweep summary
    assert not any(name.startswith("outputs/serve") for name in runs)  # the visitors' data is never listed


def test_run_page_shows_every_plot_and_report(served):
    client = TestClient(served[0])
    res = client.get("/runs/view/statistics/cnn")
    assert res.status_code == 200
    plots = sorted(p.name for p in (ROOT / "statistics" / "cnn").glob("*.png"))
    for name in plots:
        assert f"/runs/file/statistics/cnn/{name}" in res.text
        img = client.get(f"/runs/file/statistics/cnn/{name}")
        assert img.status_code == 200 and img.content[:4] == b"\x89PNG"
    assert "/runs/file/statistics/cnn/metrics.json" in res.text
    assert client.get("/runs").status_code == 200 and "statistics/facenet" in client.get("/runs").text


def test_compare_shows_the_table_and_plot(served):
    client = TestClient(served[0])
    res = client.get("/runs/compare?run=statistics/cnn&run=statistics/facenet")
    assert res.status_code == 200
    assert "age_mae" in res.text and "statistics/facenet" in res.text
    plot = res.text.split('src="/runs/compare/plot/')[1].split('"')[0]
    img = client.get("/runs/compare/plot/" + plot)
    assert img.status_code == 200 and img.content[:4] == b"\x89PNG"
    assert client.get("/runs/compare?run=statistics/cnn").status_code == 404


def test_path_tricks_are_404(served, tmp_path):
    app, _, tmp = served
    client = TestClient(app)
    outside = tmp / "runs" / "outputs" / "escape"
    if not outside.exists():
        outside.symlink_to(ROOT / "src")
    for url in ("/runs/file/statistics/cnn/%2e%2e/%2e%2e/src/main.py", "/runs/file/statistics%2F..%2Fsrc%2Fmain.py",
                "/runs/file/statistics/..%2f..%2fsrc/main.py", "/files/..%2Fserve.sqlite3", "/static/..%2F..%2Fapp.py",
                "/runs/file/outputs/escape/main.py", "/runs/file/outputs/serve/serve.sqlite3",
                "/runs/file/statistics/cnn/app.log/..", "/runs/file/statistics/cnn%5c..%5cmetrics.json",
                "/runs/view/statistics/%2e%2e", "/runs/file//etc/passwd", "/runs/file/statistics/../src/main.py"):
        res = client.get(url)
        assert res.status_code == 404, url
    assert client.get("/runs/file/statistics/cnn/metrics.json").status_code == 200


@contextlib.contextmanager
def live_server(app):
    """``app`` under uvicorn on a free loopback port, in a thread; yields the port."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_real_http_path_tricks_and_upload_against_uvicorn(served):
    """Raw request lines (no client-side normalisation) against uvicorn on a free loopback port."""
    with live_server(served[0]) as port:
        for path in ("/runs/file/statistics/../src/main.py", "/runs/file/statistics/cnn/../../src/main.py",
                     "/files/../serve.sqlite3", "/runs/file/statistics/cnn/..%2F..%2Fsrc/main.py",
                     "/static/../app.py"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.putrequest("GET", path, skip_accept_encoding=True)
            conn.endheaders()
            res = conn.getresponse()
            assert res.status == 404, path
            res.read()
            conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/health")
        assert conn.getresponse().status == 200


def stream_upload(port: int, cookie: str, token: str, declared: int | None, limit: int) -> tuple[int, bytes]:
    """POST a multipart upload of ``limit`` bytes and more, 16 KiB a write, chunked when
    ``declared`` is None (else with that Content-Length); stops at the server's first answer.
    Returns (bytes of body sent, the answer's first bytes)."""
    import select
    import socket

    boundary = "----faceattrtest"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    framing = ("Transfer-Encoding: chunked" if declared is None else f"Content-Length: {declared}")
    request = (f"POST /api/uploads HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
               f"X-CSRF-Token: {token}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
               f"{framing}\r\n\r\n").encode()
    sent, piece = 0, b"\xff" * 16384
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        for i in range(limit * 4 // len(piece) + 2):
            data = head + piece if i == 0 else piece
            try:
                conn.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n" if declared is None else data)
            except OSError:  # the server closed the connection after answering
                break
            sent += len(data)
            if select.select([conn], [], [], 0.02)[0]:
                break
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                answer.lower().split(b"content-length: ", 1)[-1].split(b"\r\n", 1)[0] or 0):
            try:
                more = conn.recv(4096)
            except OSError:
                break
            if not more:
                break
            answer += more
    return sent, answer


@pytest.mark.slow
@pytest.mark.parametrize("declared", [None, 50 * 2**20], ids=["chunked", "content-length"])
def test_an_upload_past_the_limit_is_refused_while_it_streams(pipeline, tmp_path, monkeypatch, declared):
    """Over real HTTP: 413 once the body passes ``serve.max_upload_mb`` (plus the multipart
    framing allowance), long before the client is done; no temporary file is left or held open."""
    import tempfile

    from faceattr.serve.app import MULTIPART_SLACK

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where an upload's spooled copy would go
    app, _ = make_app(tmp_path, pipeline, "serve.max_upload_mb=1.5")
    client, token = client_of(app)
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    limit = int(1.5 * 2**20) + MULTIPART_SLACK
    with live_server(app) as port:
        sent, answer = stream_upload(port, cookie, token, declared, limit)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"over the limit of 1.5 MB" in answer
    assert sent < limit + 4 * 16384  # answered as soon as the limit was crossed
    if declared is not None:
        assert sent < 4 * 16384  # a declared length past the limit: refused before the body is read
    assert list(spool.iterdir()) == []
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
    assert not [h for h in held if h.startswith(str(spool))], held


def test_the_page_has_the_upload_controls_and_sets_a_session(served):
    client = TestClient(served[0])
    res = client.get("/")
    assert res.status_code == 200
    assert 'type="file"' in res.text and 'id="drop"' in res.text and "/static/app.js" in res.text
    assert "httponly" in res.headers["set-cookie"].lower()
    assert client.get("/static/app.js").status_code == 200


def test_serve_refuses_a_bad_port_in_one_line():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "serve", "serve.port=70000"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: configuration: serve.port=70000 is not allowed: expected a whole number >= 0 and <= 65535"]


@pytest.mark.slow
def test_serve_refuses_a_busy_port_in_one_line_before_loading_the_model(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "serve", f"serve.port={port}",
                              f"serve.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: serve.host=127.0.0.1 serve.port={port}: cannot listen there (Address already in use)"]
    assert "Loading the model" not in res.stdout


# ------------------------------------------------------------------- hosts, headers, error bodies

@pytest.mark.parametrize("host, status", [
    ("testserver", 200), ("127.0.0.1:8765", 200), ("localhost", 200), ("LOCALHOST:80", 200), ("[::1]:8765", 200),
    ("attacker.example:8765", 400), ("attacker.example", 400), ("127.0.0.1.attacker.example", 400),
    ("192.168.1.20:8765", 400),
])
def test_only_allowed_host_names_are_answered(served, host, status):
    """DNS rebinding: a page on attacker.example whose name points at 127.0.0.1 sends its own Host."""
    client = TestClient(served[0])
    res = client.get("/api/health", headers={"Host": host})
    assert res.status_code == status, res.text
    if status == 400:
        assert res.json()["error"].startswith("Host ") and "serve.allowed_hosts" in res.json()["error"]
        res = client.get("/api/runs", headers={"Host": host})
        assert res.status_code == 400 and "runs" not in res.json()


def test_allowed_hosts_by_bound_address_and_setting(pipeline, tmp_path):
    from faceattr.serve.guards import allowed_hosts

    names, any_address = allowed_hosts("127.0.0.1", [])
    assert {"localhost", "127.0.0.1", "::1"} <= names and not any_address and "testserver" not in names
    names, any_address = allowed_hosts("192.168.1.20", ["Photos.Lab.Example"])
    assert {"192.168.1.20", "photos.lab.example", "localhost"} <= names and not any_address
    names, any_address = allowed_hosts("0.0.0.0", [])
    assert any_address and "localhost" in names
    app, _ = make_app(tmp_path, pipeline, "serve.host=0.0.0.0")
    client = TestClient(app)
    assert client.get("/api/health", headers={"Host": "192.168.1.20:8000"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "attacker.example"}).status_code == 400
    app, _ = make_app(tmp_path, pipeline, "serve.allowed_hosts=['*']")
    assert TestClient(app).get("/api/health", headers={"Host": "attacker.example"}).status_code == 200


def test_every_answer_carries_the_security_headers(served, uploaded):
    client, token, body = uploaded
    urls = ("/", "/runs", "/api/health", "/static/app.js", body["faces"][0]["crop_url"], "/nowhere",
            "/runs/file/statistics/cnn/metrics.json")
    answers = [client.get(u) for u in urls]
    answers.append(client.get("/api/health", headers={"Host": "attacker.example"}))
    answers.append(client.post("/api/uploads", headers={"X-CSRF-Token": token, "Content-Length": str(2**30)}))
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 200, 404, 200, 400, 413]
    for res in answers:
        csp = res.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert res.headers["x-content-type-options"] == "nosniff"
        assert res.headers["referrer-policy"] == "same-origin"
    page = answers[0].text
    assert "<script>" not in page and " onclick=" not in page and " style=" not in page  # nothing inline


def test_an_error_quotes_only_a_short_prefix_of_a_bad_value(uploaded):
    client, token, body = uploaded
    url = f"/api/uploads/{body['id']}/faces/0/label"
    for payload in ({"gender": "x" * 5_000_000}, {"age": "9" * 100_000}, {"y" * 100_000: 1},
                    {"race": ["white"] * 100_000}):
        res = client.put(url, json=payload, headers={"X-CSRF-Token": token})
        assert res.status_code == 422
        assert len(res.content) < 300, res.text[:300]
    res = client.get("/api/uploads/" + "a" * 30_000)
    assert res.status_code == 404 and len(res.content) < 300


def test_odd_paths_are_404_not_500(uploaded):
    client, token, body = uploaded
    res = client.put(f"/api/uploads/{body['id']}/faces/%C2%B2/label", json={"age": 3},  # "²".isdigit() is True
                     headers={"X-CSRF-Token": token})
    assert res.status_code == 404, res.text
    for url in ("/runs/file/statistics/facenet%00.png", "/runs/view/statistics/facenet%00",
                "/runs/file/statistics/" + "n" * 5000 + ".png", "/runs/view/statistics/" + "n" * 5000):
        res = client.get(url)
        assert res.status_code == 404, (url[:60], res.status_code)


def test_an_unexpected_failure_is_500_naming_no_python_class(pipeline, tmp_path, monkeypatch):
    app, _ = make_app(tmp_path, pipeline)

    def broken() -> list:
        raise KeyError("a bug")

    monkeypatch.setattr(app.state.browser, "runs", broken)  # a fault no route expects
    res = TestClient(app).get("/api/runs")
    assert res.status_code == 500
    assert res.json() == {"error": "internal error (the server's log has the details)"}
    assert res.headers["x-content-type-options"] == "nosniff"


def test_pages_answer_errors_as_pages_and_the_api_as_json(served):
    client = TestClient(served[0])
    page = client.get("/runs/compare?run=statistics/cnn", headers={"Accept": "text/html,*/*"})
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "choose two or more runs" in page.text and "<h1>" in page.text
    assert client.get("/nowhere", headers={"Accept": "text/html"}).headers["content-type"].startswith("text/html")
    api = client.get("/api/uploads/" + "0" * 32, headers={"Accept": "text/html"})
    assert api.status_code == 404 and api.json()["error"].endswith("not found")


# ------------------------------------------------------------------------------------ fail safe

@contextlib.contextmanager
def read_only(*folders: Path):
    """``folders`` made unwritable for the duration: ``chattr +i`` as root (root ignores modes)."""
    import shutil
    import subprocess

    if os.geteuid() != 0:
        modes = [f.stat().st_mode for f in folders]
        for f in folders:
            f.chmod(0o555)
        try:
            yield
        finally:
            for f, mode in zip(folders, modes, strict=True):
                f.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", *map(str, folders)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("running as root, and chattr +i (the only way to make a folder read-only for root) fails here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, folders)], check=True)


def stored_files_agree(store) -> None:
    """Every file the database names is there, and every file there is named by the database."""
    with sqlite3.connect(store.path) as db:
        named = {r[0] for r in db.execute("SELECT original FROM uploads UNION SELECT annotated FROM uploads "
                                          "UNION SELECT crop FROM faces")}
    present = {p.name for p in store.files_dir.iterdir()}
    assert named == present, (named ^ present)


def test_the_health_check_is_503_when_the_data_folder_cannot_be_written(pipeline, tmp_path):
    import shutil

    app, cfg = make_app(tmp_path, pipeline)
    client = TestClient(app)
    assert client.get("/api/health").status_code == 200
    store = app.state.store
    with read_only(store.files_dir, store.data_dir):
        res = client.get("/api/health")
        assert res.status_code == 503 and res.json()["status"] == "unavailable", res.text
    assert client.get("/api/health").status_code == 200
    shutil.rmtree(store.data_dir)
    res = client.get("/api/health")
    assert res.status_code == 503 and "missing" in res.json()["problem"]


def test_with_the_data_folder_removed_every_storage_route_is_503(pipeline, tmp_path):
    import shutil

    app, _ = make_app(tmp_path, pipeline)
    client, token = client_of(app)
    body = post_image(client, token, ASTRONAUT.read_bytes(), "a.jpg").json()
    client.put(f"/api/uploads/{body['id']}/faces/0/label", json={"age": 9}, headers={"X-CSRF-Token": token})
    shutil.rmtree(app.state.store.data_dir)
    answers = {
        "upload": post_image(client, token, ASTRONAUT.read_bytes(), "b.jpg"),
        "relabel": client.put(f"/api/uploads/{body['id']}/faces/0/label", json={"age": 10},
                              headers={"X-CSRF-Token": token}),
        "corrections.csv": client.get("/api/corrections.csv"),
        "uploads": client.get("/api/uploads"),
        "upload page data": client.get(f"/api/uploads/{body['id']}"),
        "crop": client.get(body["faces"][0]["crop_url"]),
    }
    for what, res in answers.items():
        assert res.status_code == 503, (what, res.status_code, res.text[:200])
        error = res.json()["error"]
        assert "data folder" in error and "Error" not in error and str(tmp_path) not in error, error


def test_a_relabel_that_cannot_be_written_changes_nothing(pipeline, tmp_path):
    app, _ = make_app(tmp_path, pipeline)
    client, token = client_of(app)
    body = post_image(client, token, ASTRONAUT.read_bytes(), "a.jpg").json()
    url = f"/api/uploads/{body['id']}/faces/0/label"
    assert client.put(url, json={"age": 30}, headers={"X-CSRF-Token": token}).status_code == 200
    before = client.get(f"/api/uploads/{body['id']}").json()
    store = app.state.store
    with read_only(store.files_dir):
        res = client.put(url, json={"age": 55, "race": "indian"}, headers={"X-CSRF-Token": token})
        assert res.status_code == 503 and "Error" not in res.json()["error"], res.text
    after = client.get(f"/api/uploads/{body['id']}").json()
    assert after == before  # the correction and the drawing named are the old ones
    assert client.get(after["image_url"]).status_code == 200
    stored_files_agree(store)


def test_a_correction_can_be_cleared_field_by_field(pipeline, tmp_path):
    app, _ = make_app(tmp_path, pipeline)
    client, token = client_of(app)
    body = post_image(client, token, ASTRONAUT.read_bytes(), "a.jpg").json()
    url, headers = f"/api/uploads/{body['id']}/faces/0/label", {"X-CSRF-Token": token}
    assert client.put(url, json={"age": 30, "race": "black"}, headers=headers).json()["correction"] == {
        "age": 30, "race": "black"}
    assert client.put(url, json={"age": None}, headers=headers).json()["correction"] == {"race": "black"}
    res = client.put(url, json={"race": None}, headers=headers)
    assert res.status_code == 200 and res.json()["correction"] == {} and res.json()["corrections"] == {}
    assert client.get("/api/corrections.csv").text.strip() == "file,age,gender,race"
    stored_files_agree(app.state.store)


def serve_once(tmp_path: Path, data_dir: Path):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "serve", "serve.port=0",
                           f"serve.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.slow
def test_serve_refuses_a_data_folder_it_cannot_write_in_one_line(tmp_path):
    from faceattr.serve.store import Store

    data = tmp_path / "data"
    Store(data).close()  # a data folder from an earlier start, now read-only
    with read_only(data / "files", data):
        res = serve_once(tmp_path, data)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: serve.data_dir={data}: ") and "Traceback" not in res.stderr
    assert "Loading the model" not in res.stdout
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    res = serve_once(tmp_path, blocked / "data")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: serve.data_dir={blocked / 'data'}: the data folder cannot be created or written (Not a directory)"]


# -------------------------------------------------------------------------------------- sessions

@pytest.mark.slow
def test_a_session_is_stored_only_by_its_first_upload_and_expires(pipeline, tmp_path):
    app, cfg = make_app(tmp_path, pipeline, "serve.retention_hours=2")
    store = app.state.store
    for _ in range(100):  # visitors who only look
        assert TestClient(app).get("/").status_code == 200
        assert TestClient(app).get("/api/session").status_code == 200
    assert store.session_count() == 0
    client, token = client_of(app)
    assert post_image(client, token, b"not an image", "x.jpg").status_code == 422
    assert store.session_count() == 0  # a refused upload stores nothing either
    body = post_image(client, token, ASTRONAUT.read_bytes(), "a.jpg").json()
    assert post_image(client, token, ASTRONAUT.read_bytes(), "b.jpg").status_code == 201
    assert store.session_count() == 1
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE uploads SET created = created - 3 * 3600")
    assert store.purge(2 * 3600.0) == 2
    assert store.session_count() == 0
    assert client.get(f"/api/uploads/{body['id']}").status_code == 404


def test_the_session_cookie_is_signed_and_lasts_as_long_as_uploads(pipeline, tmp_path):
    app, _ = make_app(tmp_path, pipeline, "serve.retention_hours=2")
    res = TestClient(app).get("/api/session")
    cookie = res.headers["set-cookie"].lower()
    assert "max-age=7200" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    sid = res.cookies["faceattr_session"].split(".")[0]
    forged = TestClient(app, cookies={"faceattr_session": sid + "." + "0" * 32})
    again = forged.get("/api/session")
    assert "set-cookie" in again.headers  # not accepted: a new session is issued
    assert again.json()["csrf"] != res.json()["csrf"]
    plain = TestClient(app, cookies={"faceattr_session": sid})
    assert post_image(plain, res.json()["csrf"], ASTRONAUT.read_bytes()).status_code == 403


def test_faces_are_numbered_in_reading_order(served):
    """Three faces: two in the top row (the right one a little higher), one below. Numbered
    left to right, top to bottom, as run numbers them."""
    from faceattr.inference.detectors import Detection
    from faceattr.inference.pipeline import reading_order

    face = cv2.resize(cv2.imread(str(ASTRONAUT)), (300, 300))
    canvas = np.full((900, 1000, 3), 128, np.uint8)
    places = [(650, 60), (50, 80), (350, 560)]
    for x, y in places:
        canvas[y:y + 300, x:x + 300] = face
    client, token = client_of(served[0])
    res = post_image(client, token, png_bytes(canvas), "three.png")
    assert res.status_code == 201, res.text
    boxes = [f["box"] for f in res.json()["faces"]]
    assert [f["index"] for f in res.json()["faces"]] == [0, 1, 2]
    nearest = [min(range(3), key=lambda i: abs(places[i][0] - b[0]) + abs(places[i][1] - b[1])) for b in boxes]
    assert nearest == [1, 0, 2], boxes
    rows = [Detection(300, 10, 50, 50), Detection(10, 30, 50, 50), Detection(200, 200, 60, 60),
            Detection(20, 210, 40, 40)]
    assert [(d.x, d.y) for d in reading_order(rows)] == [(10, 30), (300, 10), (20, 210), (200, 200)]


@pytest.mark.slow
def test_ctrl_c_stops_serve_with_interrupted_and_exit_130(tmp_path):
    """Ctrl-C: one line, never 'Results written to' with exit 0."""
    import signal
    import subprocess
    import sys

    argv = [sys.executable, str(ROOT / "src" / "main.py"), "serve", "--model_type", "cnn", "serve.port=0",
            f"serve.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            preexec_fn=default_sigint)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("Serving on"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, err[-1000:])
    assert err.strip().splitlines()[-1] == "interrupted" and "Results written to" not in out
