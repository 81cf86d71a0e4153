"""What every benchmark section shares: paths, repetition settings, targets, the result row,
progress lines and timing, and the example face every section measures with."""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

#: The environment the script was started with: subprocesses (`run --img`, `train`) get it unchanged.
ENV = dict(os.environ)
MAIN_PY = SRC / "main.py"
CONF = ROOT / "conf"
CACHE = ROOT / ".cache"
PHOTO = ROOT / "examples" / "astronaut.jpg"
DEFAULT_OUT = ROOT / "benchmarks" / "results.json"
MODELS = ("cnn", "facenet")
BASELINE = "frozen_graph"  # the frozen FaceNet graph run directly (facenet_graph.run_frozen_graph)

#: (metric, model) -> (comparison, target). Rows without an entry have no target.
TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("latency_b1", "cnn"): ("<=", 5.0),
    ("latency_b1", "facenet"): ("<=", 25.0),
    ("run_img_cold", "cnn"): ("<=", 8.0),
    ("run_img_cold", "facenet"): ("<=", 8.0),
    ("video_fps", "cnn"): (">=", 30.0),
    ("video_fps", "facenet"): (">=", 30.0),
    ("video_fps_4faces", "cnn"): (">=", 25.0),
    ("video_fps_4faces", "facenet"): (">=", 25.0),
}
METRIC_ORDER = (
    "latency_b1", "latency_b1_keras", "throughput_b32", "throughput_b32_keras", "run_img_cold", "video_fps",
    "video_fps_haar", "video_fps_4faces", "video_fps_4faces_haar", "video_fps_refresh1", "video_camera_kept",
    "video_camera_kept_haar", "train_images_per_s",
    "feature_extraction_images_per_s", "shipped_train_seconds", "shipped_epochs_run",
    "shipped_train_images_per_s", "shipped_feature_seconds", "shipped_feature_images_per_s",
    "shipped_head_seconds", "head_only_seconds",
)
MODEL_ORDER = (*MODELS, BASELINE)


@dataclass(frozen=True)
class Settings:
    """How many repetitions each measurement gets (``--quick`` lowers them)."""

    warmup: int = 5              # untimed calls before each latency/throughput measurement
    latency_calls: int = 30      # batch-1 calls; the median is reported
    b32_calls: int = 5           # batch-32 calls (Keras models); the median is reported
    frozen_b32_calls: int = 3    # 32 sequential frozen-graph calls, repeated this often
    run_img_repeats: int = 3     # cold `run --img` subprocesses per model; the median is reported
    video_frames: int = 90       # 640x480 at 30 fps, per clip (two faces, four faces)
    train_images: int = 256      # random images for the CNN's training steps
    train_batch: int = 64        # train.batch_size, as the shipped CNNs were trained
    feature_images: int = 64     # images through FeatureCache's trunk
    feature_batch: int = 32
    serve_uploads: int = 200     # uploads to the local web app (section serve)
    serve_clients: int = 8       # concurrent clients, each with its own session


FULL = Settings()
QUICK = Settings(warmup=2, latency_calls=10, b32_calls=2, frozen_b32_calls=1, run_img_repeats=1, video_frames=30,
                 train_images=128, train_batch=64, feature_images=32, feature_batch=32, serve_uploads=24,
                 serve_clients=4)


@dataclass
class Row:
    """One measurement: ``value`` in ``unit`` for ``metric`` of ``model``; ``status`` ok |
    skipped | error, with ``note`` saying why (or what the number is); ``pass`` compares the
    value with the target (``TARGETS``, or ``given_target``)."""

    metric: str
    model: str
    value: float | None
    unit: str
    status: str = "ok"            # ok | skipped | error
    note: str = ""                # why skipped/failed, or what the number is
    details: dict[str, Any] = field(default_factory=dict)
    given_target: tuple[str, float] | None = None  # a section's own target; else TARGETS'
    section: str = ""             # the benchmark section that measured it (run.py sets it)

    @property
    def target(self) -> tuple[str, float] | None:
        return self.given_target or TARGETS.get((self.metric, self.model))

    @property
    def passed(self) -> bool | None:
        if self.status != "ok" or self.value is None or self.target is None:
            return None
        op, limit = self.target
        return self.value <= limit if op == "<=" else self.value >= limit

    def as_json(self) -> dict[str, Any]:
        target = self.target
        return {"metric": self.metric, "model": self.model, "value": self.value, "unit": self.unit,
                "target": f"{target[0]} {target[1]:g}" if target else None, "pass": self.passed,
                "status": self.status, "note": self.note, "details": self.details, "section": self.section}


_T0 = time.perf_counter()


def progress(message: str) -> None:
    """One progress line on stderr, with the seconds since the script started."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def stats_ms(seconds: list[float]) -> dict[str, float]:
    """Call count and median/min/p90/mean in milliseconds of per-call times in seconds."""
    ms = sorted(s * 1000.0 for s in seconds)
    p90 = ms[min(len(ms) - 1, math.ceil(0.9 * len(ms)) - 1)]
    return {"calls": len(ms), "median_ms": round(median(ms), 3), "min_ms": round(ms[0], 3),
            "p90_ms": round(p90, 3), "mean_ms": round(statistics.fmean(ms), 3)}


def time_calls(fn: Callable[[], Any], calls: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn`` over ``calls`` calls after ``warmup`` untimed ones."""
    return time_interleaved({"fn": fn}, calls, warmup)["fn"]


def time_interleaved(fns: dict[str, Callable[[], Any]], calls: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns``, timed in rounds: each round calls every function
    once, starting one further along each time, so a machine that speeds up or slows down
    during the measurement shifts every model's times alike and their ratio stays fair
    (timing one model after another would hand the drift to whichever came last)."""
    names = list(fns)
    if not names:
        return {}
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(calls):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            fns[name]()
            out[name].append(time.perf_counter() - start)
    return out


def rel(path: Path) -> str:
    """``path`` relative to the project root when inside it (for messages and the JSON)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def guarded(metric: str, model: str, unit: str, fn: Callable[[], Row | list[Row]]) -> list[Row]:
    """Run one measurement; a failure becomes an ``error`` row instead of ending the run."""
    try:
        out = fn()
    except Exception as exc:
        progress(f"{model}: {metric} failed: {type(exc).__name__}: {exc}")
        return [Row(metric, model, None, unit, "error", f"{type(exc).__name__}: {exc}",
                    {"traceback": traceback.format_exc(limit=4)})]
    return out if isinstance(out, list) else [out]


def skipped(metric: str, model: str, unit: str, reason: str) -> Row:
    return Row(metric, model, None, unit, "skipped", reason)


def photo_face():
    """The example photo (BGR) and its first Haar detection."""
    import cv2

    from faceattr.inference.detectors import HaarDetector

    image = cv2.imread(str(PHOTO))
    if image is None:
        raise RuntimeError(f"{PHOTO}: cannot read the example photo")
    faces = HaarDetector().detect(image)
    if not faces:
        raise RuntimeError(f"{PHOTO}: no face found by the Haar detector")
    return image, faces[0]


def face_batch(size: int, n: int, margin: float = 0.4):
    """(n, size, size, 3) float32 RGB [0, 255]: the example face cropped like `run` crops it."""
    import cv2
    import numpy as np

    from faceattr.inference.crop import crop_face

    image, det = photo_face()
    crop = crop_face(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), det, margin, size).astype(np.float32)
    return np.repeat(crop[None], n, axis=0)
