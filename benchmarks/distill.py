"""Section ``distill``: the teacher, the shipped three-CNN ensemble and a distilled student side by side.

    python benchmarks/distill.py [STUDENT_DIR]     # default: outputs/distill_cnn/model

Per model (through ``inference.Predictor`` with the backend ``run`` serves, flip TTA off so
one face is one forward pass): batch-1 latency (ms/face, median), batch-32 throughput
(faces/s) and size (MB of ``model.tflite``, and of the Keras file); the models are timed
in turns, call by call, so their ratios survive a machine whose speed drifts. Then the
teacher-labelling rate of ``distill``'s own path (``distill.sources.SourceReader`` -> detect, align ->
``distill.teacher.Teacher.label_chips``), in faces/s, for photos and for a video, with an empty
teacher cache so every face goes through the teacher. ``run_distill_benchmark`` returns
``{"rows": [...], ...}`` in the form ``benchmarks/run.py --only distill`` reads.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "src"):  # ``benchmarks.video`` (the test clip) and ``faceattr``
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

DEFAULT_STUDENT = ROOT / "outputs" / "distill_cnn" / "model"
LATENCY_CALLS, THROUGHPUT_CALLS, WARMUP = 30, 5, 3
PHOTOS, VIDEO_FRAMES, VIDEO_STRIDE = 12, 60, 3


def measure_models(models: dict[str, Path], cache_dir: Path) -> list[dict[str, Any]]:
    """Batch-1 latency, batch-32 throughput and size of each model folder. The models are timed
    in turns (``benchmarks.common.time_interleaved``), so the ratios between them hold on a
    machine whose speed drifts."""
    import numpy as np

    from benchmarks.common import time_interleaved
    from faceattr.distill.report import size_mb
    from faceattr.inference.predictor import Predictor

    predictors = {name: Predictor.load(folder, cache_dir, batch_size=32, tta_flip=False, backend="auto")
                  for name, folder in models.items()}
    rng = np.random.default_rng(0)
    inputs = {}
    for name, predictor in predictors.items():
        size = predictor.input_size
        inputs[name] = (rng.integers(0, 256, (1, size, size, 3)).astype(np.float32),
                        rng.integers(0, 256, (32, size, size, 3)).astype(np.float32))
    lat = time_interleaved({name: (lambda p=p, x=inputs[name][0]: p.predict_arrays(x))
                            for name, p in predictors.items()}, LATENCY_CALLS, WARMUP)
    b32 = time_interleaved({name: (lambda p=p, x=inputs[name][1]: p.predict_arrays(x))
                            for name, p in predictors.items()}, THROUGHPUT_CALLS, 1)
    rows = []
    for name, predictor in predictors.items():
        sizes = size_mb(models[name])
        details = {"model_dir": str(models[name]), "backend": predictor.backend,
                   "input_size": predictor.input_size, "timed": "in turns with " + ", ".join(predictors), **sizes}
        rows += [
            {"metric": "latency_b1", "model": name, "value": round(1000 * statistics.median(lat[name]), 3),
             "unit": "ms/face", "note": predictor.backend, "details": details},
            {"metric": "throughput_b32", "model": name, "value": round(32 / statistics.median(b32[name]), 2),
             "unit": "faces/s", "note": predictor.backend, "details": details},
            {"metric": "size", "model": name, "value": sizes["tflite_mb"] if sizes["tflite_mb"] is not None
             else sizes["keras_mb"], "unit": "MB", "note": "model.tflite" if sizes["tflite_mb"] is not None
             else "Keras file", "details": details},
        ]
    return rows


def _photos(folder: Path) -> list[Path]:
    """``PHOTOS`` versions of the example photo at different scales (each face a new chip)."""
    import cv2

    image = cv2.imread(str(ROOT / "examples" / "astronaut.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(PHOTOS):
        scale = 0.6 + 0.05 * i
        path = folder / f"photo_{i:02d}.jpg"
        cv2.imwrite(str(path), cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
        paths.append(path)
    return paths


def measure_labelling(teacher_dir: Path, scratch: Path) -> list[dict[str, Any]]:
    """Faces/s through ``distill``'s path, photos and video, with an empty teacher cache."""
    from faceattr.config import compose_config
    from faceattr.distill.command import make_reader
    from faceattr.distill.teacher import Teacher, TeacherCache

    cfg = compose_config(["command=distill", f"distill.teacher={teacher_dir}",
                          f"distill.video_stride={VIDEO_STRIDE}"])
    teacher = Teacher(cfg, teacher_dir)
    teacher.predictor().warmup()
    reader = make_reader(cfg, teacher, held_out={})
    rows = []
    photos = _photos(scratch / "photos")
    try:
        from benchmarks.video import make_clip

        clip = make_clip(scratch / "clip.mp4", VIDEO_FRAMES)
    except ImportError:
        clip = None
    for kind, read in (("photos", lambda: reader.read_photos(photos)),
                       ("video", (lambda: reader.read_video(clip)) if clip is not None else None)):
        if read is None:
            rows.append({"metric": f"teacher_label_rate_{kind}", "model": "teacher", "value": None,
                         "unit": "faces/s", "status": "skipped", "note": "benchmarks/video.py missing"})
            continue
        teacher.cache = TeacherCache(scratch / f"cache_{kind}", teacher.identity)  # nothing cached
        start = time.perf_counter()
        records = read()
        chips = [r.chip for r in records if r.kept and r.chip is not None]
        teacher.label_chips(chips)
        seconds = time.perf_counter() - start
        rows.append({"metric": f"teacher_label_rate_{kind}", "model": "teacher",
                     "value": round(len(chips) / seconds, 2) if chips else 0.0, "unit": "faces/s",
                     "details": {"faces": len(chips), "seconds": round(seconds, 2), "labelled": teacher.cache.labelled,
                                 "inputs": len(photos) if kind == "photos" else VIDEO_FRAMES,
                                 "video_stride": VIDEO_STRIDE if kind == "video" else None,
                                 "detector": str(cfg.detector.name)}})
    return rows


def run_distill_benchmark(student_dir: str | None = None) -> dict:
    """Teacher (saved_model/facenet), ensemble (saved_model/cnn) and student side by side,
    and the teacher-labelling rate. A missing model folder gives a ``skipped`` row."""
    from faceattr.config import compose_config

    cfg = compose_config(["command=distill"])
    cache_dir = Path(cfg.paths.cache)
    teacher_dir = Path(str(cfg.distill.teacher))
    models = {"teacher": teacher_dir, "ensemble": Path(cfg.paths.saved_models) / "cnn",
              "student": Path(student_dir) if student_dir else DEFAULT_STUDENT}
    rows: list[dict[str, Any]] = [
        {"metric": "latency_b1", "model": name, "value": None, "unit": "ms/face", "status": "skipped",
         "note": f"{folder}: no model folder"}
        for name, folder in models.items() if not (folder / "model_info.json").is_file()]
    rows += measure_models({name: folder for name, folder in models.items()
                            if (folder / "model_info.json").is_file()}, cache_dir)
    lat = {r["model"]: r["value"] for r in rows if r["metric"] == "latency_b1" and r.get("value")}
    if "student" in lat and "ensemble" in lat:
        rows.append({"metric": "latency_b1_ratio_to_ensemble", "model": "student",
                     "value": round(lat["student"] / lat["ensemble"], 3), "unit": "x", "target": "<= 0.4"})
    with tempfile.TemporaryDirectory(prefix="distill_bench_") as scratch:
        rows += measure_labelling(teacher_dir, Path(scratch))
    return {"rows": rows, "models": {k: str(v) for k, v in models.items()}}


if __name__ == "__main__":
    import json

    result = run_distill_benchmark(sys.argv[1] if len(sys.argv) > 1 else None)
    for row in result["rows"]:
        value = "-" if row.get("value") is None else row["value"]
        print(f"{row['metric']:<32} {row['model']:<9} {value!s:>10} {row['unit']:<8} {row.get('note', '')}")
    print(json.dumps(result, indent=2, default=str))
