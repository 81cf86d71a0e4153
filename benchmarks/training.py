"""Sections ``train``, ``shipped`` and ``head_only``: training throughput of the CNN and of
FaceNet's feature extraction, the figures the shipped models' own training runs logged, and the
time of a cached FaceNet head-only run."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import CACHE, ENV, MAIN_PY, ROOT, Row, Settings, photo_face, progress, rel
from benchmarks.models import ModelEntry, model_config


def measure_cnn_training(entry: ModelEntry | None, s: Settings) -> Row:
    """Images/s of ``fit`` on random in-memory images (the epoch after the one that traces)."""
    import keras
    import numpy as np

    from faceattr.models.cnn import build_cnn
    from faceattr.models.heads import compile_args

    cfg, source = model_config("cnn", entry)
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
    progress(f"cnn: training throughput ({n} random {size}px images, batch {batch}, 2 epochs, 2nd timed)")
    model.fit(x, y, batch_size=batch, epochs=2, shuffle=True, verbose=0, callbacks=[timer])
    return Row("train_images_per_s", "cnn", round(n / timer.seconds[-1], 2), "images/s",
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


SUMMARY_KEYS = ("train_seconds", "epochs_run", "feature_seconds", "feature_images_extracted")


def find_summary(entry: ModelEntry, explicit: Path | None) -> tuple[dict | None, str | None, list[str]]:
    """A ``train_summary.json``-like dict for the model: the ``--train-summary`` file, one beside
    or above the model folder, or training figures inside ``model_info.json``."""
    looked: list[str] = []
    candidates = [explicit] if explicit else [entry.dir / "train_summary.json", entry.dir.parent / "train_summary.json"]
    for path in candidates:
        looked.append(rel(path))
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise RuntimeError(f"{path}: unreadable ({exc})") from None
            if isinstance(data, dict) and "train_seconds" in data:
                return data, rel(path), looked
        elif explicit:
            raise RuntimeError(f"{path}: no such file (--train-summary)")
    raw = entry.raw_info or {}
    looked.append(rel(entry.dir / "model_info.json"))
    for key in ("train_summary", "training", "train"):
        if isinstance(raw.get(key), dict) and "train_seconds" in raw[key]:
            return raw[key], f"{rel(entry.dir / 'model_info.json')} ({key})", looked
    if "train_seconds" in raw:
        return {k: raw[k] for k in SUMMARY_KEYS if k in raw}, rel(entry.dir / "model_info.json"), looked
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
    """Rows of the figures the shipped model's own training run logged (see ``find_summary``)."""
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
    note = f"train_seconds of the shipped run{members}"
    if summary.get("resumed"):  # training.command: a resumed run's seconds are its last command's
        note += "; a resumed training counts only its last command, so the whole took longer"
    rows = [Row("shipped_train_seconds", name, seconds, "s", note=note, details=d)]
    if epochs is not None:
        rows.append(Row("shipped_epochs_run", name, int(epochs), "epochs", details=d))
    feat_s = float(summary.get("feature_seconds") or 0.0)
    feat_n = int(summary.get("feature_images_extracted") or 0)
    images = None if entry.missing else train_images_per_epoch(entry.dir)
    if name == "cnn" and images and epochs and seconds > 0:
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
                   details={"source": rel(path), "feature_images_extracted": data.get("feature_images_extracted")})
    if not args.full:
        return Row(metric, "facenet", None, unit, "skipped",
                   "not measured: pass --full (runs `train experiment=facenet_full`) or --head-only-seconds")
    run_dir = ROOT / "outputs" / "benchmark" / f"head_only-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, str(MAIN_PY), "train", "experiment=facenet_full", f"hydra.run.dir={run_dir}"]
    if args.data_path:
        cmd.append(f"data.path={args.data_path}")
    cmd += args.full_override
    progress(f"facenet: full cached head-only training run into {rel(run_dir)} (this takes a while)")
    start = time.perf_counter()
    sys.stdout.flush()
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=sys.stderr)  # its progress shows as it goes
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return Row(metric, "facenet", None, unit, "error", f"`train` exited with {proc.returncode} (output above)",
                   {"run_dir": rel(run_dir), "command": " ".join(cmd[1:])})
    data = json.loads((run_dir / "train_summary.json").read_text())
    extracted = int(data.get("feature_images_extracted") or 0)
    note = "train_seconds of `train experiment=facenet_full`"
    if extracted:
        note += f" (NOT head-only: {extracted} images were not cached yet)"
    return Row(metric, "facenet", float(data["train_seconds"]), unit, note=note,
               details={"run_dir": rel(run_dir), "wall_seconds": round(wall, 1), "epochs_run": data.get("epochs_run"),
                        "feature_images_extracted": extracted, "feature_seconds": data.get("feature_seconds")})
