"""Teacher and student side by side: test figures, latency per face, model size.

Both are evaluated by the toolkit's evaluation (``training.evaluate_model_dir``) on the test
split of the teacher's ``split.csv`` (which the student's model folder carries too); latency is
one face per call through ``inference.Predictor`` with the backend ``run`` would pick; size is
the model folder's Keras file and its TensorFlow Lite export (what ``run`` serves).
Written as ``distill_report.json``, ``distill_report.csv`` and ``distill_report.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from faceattr import writes
from faceattr.evaluation.model_dir import evaluate_model_dir
from faceattr.inference.predictor import Predictor
from faceattr.models.info import ModelInfo
from faceattr.models.io import trainable_file

log = logging.getLogger(__name__)

#: Figures in the side-by-side table: (key in metrics, heading, scale, digits).
FIGURES = (("age_mae", "age MAE (years)", 1.0, 2), ("gender_accuracy", "gender accuracy (%)", 100.0, 1),
           ("race_accuracy", "race accuracy (%)", 100.0, 1), ("race_balanced_accuracy", "race balanced acc. (%)",
                                                              100.0, 1))


def size_mb(model_dir: Path) -> dict[str, float | None]:
    """Megabytes of the model folder's Keras file and of its ``model.tflite`` (None if absent)."""
    model_dir = Path(model_dir)
    info = ModelInfo.read(model_dir)
    keras_file, tflite = model_dir / trainable_file(info.model_type), model_dir / "model.tflite"
    return {"keras_mb": round(keras_file.stat().st_size / 2**20, 2),
            "tflite_mb": round(tflite.stat().st_size / 2**20, 2) if tflite.is_file() else None}


def latency_ms(model_dir: Path, cache_dir: Path, faces: int, tta_flip: bool, backend: str = "auto") -> dict:
    """Median and mean milliseconds per face, one face per call, after one warm-up call."""
    predictor = Predictor.load(model_dir, cache_dir, batch_size=1, tta_flip=tta_flip, backend=backend)
    rng = np.random.default_rng(0)
    size = predictor.input_size
    predictor.warmup()
    times = []
    for _ in range(int(faces)):
        face = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        start = time.perf_counter()
        predictor.predict([face])
        times.append(1000 * (time.perf_counter() - start))
    return {"latency_ms": round(statistics.median(times), 2), "latency_mean_ms": round(statistics.fmean(times), 2),
            "backend": predictor.backend, "tta_flip": bool(tta_flip)}


def describe(cfg: DictConfig, name: str, model_dir: Path, out_dir: Path) -> dict:
    """Evaluate ``model_dir`` on its test split into ``out_dir``; add latency and size."""
    log.info("evaluating the %s (%s) on the teacher's test split", name, model_dir)
    metrics = evaluate_model_dir(cfg, Path(model_dir), Path(out_dir))
    row = {"model": name, "model_dir": str(model_dir), "model_type": ModelInfo.read(Path(model_dir)).model_type,
           **{k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}}
    row.update(size_mb(Path(model_dir)))
    row.update(latency_ms(Path(model_dir), Path(cfg.paths.cache), int(cfg.distill.latency_faces),
                          bool(cfg.run.tta_flip)))
    return row


def write_report(run_dir: Path, rows: list[dict], extra: Mapping) -> dict:
    """``distill_report.json`` (everything), ``.csv`` (one row per model) and ``.md`` (the table)."""
    run_dir = Path(run_dir)
    report = {**extra, "models": rows}
    (run_dir / "distill_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    columns = ["model", "model_type", *(k for k, *_ in FIGURES), "latency_ms", "backend", "keras_mb", "tflite_mb",
               "model_dir"]
    with open(run_dir / "distill_report.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    head = ["model", *(h for _, h, *_ in FIGURES), "latency per face (ms)", "size (MB, tflite / keras)"]
    n = int(rows[0]["n"]) if rows and "n" in rows[0] else "?"
    lines = [f"Test split of the teacher ({n} faces); latency: one face per call, as `run` serves it.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"]]
        for key, _, scale, digits in FIGURES:
            value = row.get(key)
            cells.append("" if value is None else f"{scale * value:.{digits}f}")
        cells.append(f"{row['latency_ms']:.1f} ({row['backend']})")
        cells.append(f"{row['tflite_mb'] if row['tflite_mb'] is not None else '-'} / {row['keras_mb']}")
        lines.append("| " + " | ".join(cells) + " |")
    writes.write_text(run_dir / "distill_report.md", "\n".join(lines) + "\n")  # UTF-8 whatever the locale
    return report
