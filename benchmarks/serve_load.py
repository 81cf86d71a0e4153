"""Load on the web app: ``python src/main.py serve`` on loopback under a bounded load.

    python benchmarks/serve_load.py [--model_type facenet] [--uploads 200] [--clients 8] [--out FILE]
                                    [OVERRIDE ...]   (e.g. run.tta_flip=true: the server's settings)
    python benchmarks/run.py --only serve

The server starts as a subprocess (exactly as a user starts it) on a free 127.0.0.1 port with
a scratch ``serve.data_dir``. ``clients`` threads each open their own session (cookie + CSRF
token), warm up with two uploads each (all at once), then send ``uploads`` uploads in all of a 640x480
photo with two faces (built from ``examples/astronaut.jpg`` and its mirror image). Recorded:
errors (any answer but 201 with two faces), p50/p95 latency of an upload (ms), uploads/s over
the whole load, and the server's resident memory after warm-up and at the end (MB, growth %).
Traffic goes to loopback only, and the run is bounded in count and time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTO_SIZE = (640, 480)  # width, height in pixels
START_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 120.0
WARMUP_PER_CLIENT = 2
TARGETS = {"errors": "<= 0", "p95_ms": "<= 1000", "uploads_per_s": ">= 5", "rss_growth_pct": "<= 20"}


def two_face_photo() -> bytes:
    """A 640x480 JPEG with two faces: the astronaut (examples/) and her mirror image, side by side."""
    face = cv2.imread(str(ROOT / "examples" / "astronaut.jpg"))
    if face is None:
        raise FileNotFoundError(f"{ROOT / 'examples' / 'astronaut.jpg'}: missing")
    w, h = PHOTO_SIZE
    half = cv2.resize(face, (w // 2, w // 2), interpolation=cv2.INTER_AREA)
    canvas = np.full((h, w, 3), 200, np.uint8)
    top = (h - w // 2) // 2
    canvas[top:top + w // 2, : w // 2] = half
    canvas[top:top + w // 2, w // 2:] = cv2.flip(half, 1)
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux /proc; psutil elsewhere), None if unknown."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text)[1]) / 1024.0
    except (OSError, TypeError):
        try:
            import psutil

            return psutil.Process(pid).memory_info().rss / 2**20
        except Exception:
            return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One visitor: its own session cookie and CSRF token, one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
        self.conn.request("GET", "/api/session")
        res = self.conn.getresponse()
        self.csrf = json.loads(res.read())["csrf"]
        cookie = res.getheader("set-cookie") or ""
        self.cookie = cookie.split(";", 1)[0]

    def upload(self, photo: bytes) -> tuple[int, int]:
        """(HTTP status, faces found) of one upload."""
        boundary = secrets.token_hex(12)
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"two.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Cookie": self.cookie,
                   "X-CSRF-Token": self.csrf}
        try:
            self.conn.request("POST", "/api/uploads", body=body, headers=headers)
            res = self.conn.getresponse()
            data = res.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
            return 0, 0
        faces = len(json.loads(data).get("faces", [])) if res.status == 201 else 0
        return res.status, faces

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)

    def close(self) -> None:
        self.conn.close()


def start_server(model_type: str, port: int, scratch: Path,
                 overrides: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path]:
    log = scratch / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "main.py"), "serve", "--model_type", model_type, f"serve.port={port}",
         f"serve.data_dir={scratch / 'data'}", f"serve.retrain_dir={scratch / 'retrain'}",
         f"hydra.run.dir={scratch / 'run'}", *overrides],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("serve exited: " + log.read_text()[-1000:])
        if "Serving on" in log.read_text():
            return proc, log
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"serve did not start within {START_TIMEOUT_S:g} s")


def run_serve_benchmark(model_type: str = "facenet", uploads: int = 200, clients: int = 8,
                        overrides: tuple[str, ...] = ()) -> dict:
    """Start ``serve`` with ``model_type`` (and config ``overrides``) and send ``uploads`` uploads
    from ``clients`` sessions at once; returns the figures (see the module docstring) and
    ``rows`` for benchmarks/run.py."""
    photo = two_face_photo()
    with tempfile.TemporaryDirectory(prefix="faceattr-serve-bench-") as tmp:
        scratch = Path(tmp)
        port = free_port()
        started = time.perf_counter()
        proc, _ = start_server(model_type, port, scratch, tuple(overrides))
        start_s = time.perf_counter() - started
        try:
            sessions = [Client(port) for _ in range(clients)]
            # Warm-up at full concurrency, so every worker thread and buffer the load needs exists.
            warm = [threading.Thread(target=lambda c=c: [c.upload(photo) for _ in range(WARMUP_PER_CLIENT)])
                    for c in sessions]
            for t in warm:
                t.start()
            for t in warm:
                t.join()
            for c in sessions:  # fresh connections: none left idle past the server's keep-alive
                c.reconnect()
            rss_warm = rss_mb(proc.pid)
            share = [uploads // clients + (1 if i < uploads % clients else 0) for i in range(clients)]
            latencies: list[float] = []
            errors: list[str] = []
            faces_seen: list[int] = []
            lock = threading.Lock()

            def work(client: Client, n: int) -> None:
                for _ in range(n):
                    t0 = time.perf_counter()
                    status, faces = client.upload(photo)
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)
                        faces_seen.append(faces)
                        if status != 201 or faces != 2:
                            errors.append(f"status {status}, {faces} faces")

            threads = [threading.Thread(target=work, args=(c, n)) for c, n in zip(sessions, share, strict=True)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            rss_end = rss_mb(proc.pid)
            for c in sessions:
                c.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    ms = np.asarray(latencies) * 1000.0
    growth = (100.0 * (rss_end - rss_warm) / rss_warm) if rss_warm and rss_end else None
    out: dict[str, Any] = {
        "model_type": model_type, "overrides": list(overrides), "uploads": uploads, "clients": clients,
        "photo": "640x480, two faces",
        "errors": len(errors), "error_examples": sorted(set(errors))[:5],
        "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "uploads_per_s": round(uploads / wall, 2), "wall_s": round(wall, 2), "server_start_s": round(start_s, 1),
        "rss_warm_mb": round(rss_warm, 1) if rss_warm else None, "rss_end_mb": round(rss_end, 1) if rss_end else None,
        "rss_growth_pct": round(growth, 2) if growth is not None else None,
        "faces_per_upload": round(float(np.mean(faces_seen)), 3) if faces_seen else 0.0,
        "cores": os.cpu_count(), "targets": TARGETS,
    }
    units = {"errors": "count", "p50_ms": "ms", "p95_ms": "ms", "uploads_per_s": "uploads/s",
             "rss_warm_mb": "MB", "rss_end_mb": "MB", "rss_growth_pct": "%"}
    out["rows"] = [{"metric": f"serve_{k}", "model": model_type, "value": out[k], "unit": u,
                    **({"target": TARGETS[k]} if k in TARGETS else {})} for k, u in units.items()]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_type", default="facenet", choices=["facenet", "cnn", "normal"])
    p.add_argument("--uploads", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--out", help="also write the figures to this JSON file")
    p.add_argument("overrides", nargs="*", help="the server's config overrides (KEY=VALUE)")
    args = p.parse_args(argv)
    result = run_serve_benchmark(args.model_type, args.uploads, args.clients, tuple(args.overrides))
    text = json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"written to {args.out}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
