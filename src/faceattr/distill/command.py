"""``python src/main.py distill``: a student trained on a teacher's outputs, evaluated beside it.

Flow: check the teacher (its ``split.csv`` is required) and the student's family -> the data,
split as the teacher's ``split.csv`` says (its test faces never train or validate the student)
-> unlabelled sources (``distill.unlabeled``) through the face pipeline, refused when their
content is a val/test image, labelled by the teacher, kept on its confidence (``manifest.csv``)
-> the teacher's outputs for its training split (cached by face and teacher) -> targets mixed
from labels and teacher -> the toolkit's trainer and ``fit_model`` -> ``<run dir>/model`` (an
ordinary model folder: ``run``, ``evaluate``, ``export``, ``ensemble``, ``promote``) -> teacher
and student evaluated on the teacher's test split (``distill_report.*``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from faceattr.data.prepare import prepare_dataset
from faceattr.data.utkface import rebalance, write_split_csv
from faceattr.distill.manifest import apply_teacher, write_manifest
from faceattr.distill.report import describe, write_report
from faceattr.distill.sources import SourceReader
from faceattr.distill.student import check_student_family, fit_student, mix_targets, student_trainer
from faceattr.distill.teacher import Teacher
from faceattr.errors import ConfigError, DataError
from faceattr.hashing import file_sha256
from faceattr.inference.chips import align_training_photos
from faceattr.inference.pipeline import FacePipeline
from faceattr.labels import GENDERS, RACES, age_to_bin
from faceattr.models.export import export_tflite
from faceattr.training.state import write_atomic

log = logging.getLogger(__name__)

CHIPS = "unlabeled_faces"  # the kept unlabelled face crops, in the run folder
SUMMARY = "train_summary.json"


def teacher_split(frame: pd.DataFrame, teacher: Teacher, cfg: DictConfig) -> pd.DataFrame:
    """The indexed data with the teacher's split (train/val/test) and this run's rebalancing of
    its training rows; images the teacher's split doesn't name are left out."""
    split = teacher.split.drop_duplicates("image").set_index("image")["split"]
    known = frame[frame["image"].isin(split.index)].copy()
    if known.empty:
        raise DataError(f"{cfg.data.path}: none of the images in {teacher.dir / 'split.csv'} are in it; "
                        "the student needs the data the teacher was split on")
    missing = int((~split.index.isin(frame["image"])).sum())
    if missing:
        log.warning("%d of the %d images in %s are not in %s", missing, len(split), teacher.dir / "split.csv",
                    cfg.data.path)
    known["split"] = known["image"].map(split)
    for name in ("train", "val"):
        if not (known["split"] == name).any():
            raise DataError(f"{teacher.dir / 'split.csv'}: no {name} images of it are in {cfg.data.path}")
    return rebalance(known.drop(columns=["copies", "weight"], errors="ignore"), cfg.rebalance)


def make_reader(cfg: DictConfig, teacher: Teacher, held_out: dict[str, str]) -> SourceReader:
    """The unlabelled-source reader: ``run``'s face pipelines (photos; video frames with the
    detector's video settings) around the teacher; ``held_out``: sha256 -> split of refused images."""
    predictor = teacher.predictor()
    return SourceReader(FacePipeline.from_config(cfg, predictor=predictor),
                        FacePipeline.from_config(cfg, predictor=predictor, video=True), held_out,
                        stride=int(cfg.distill.video_stride), dedup_iou=float(cfg.distill.dedup_iou),
                        dedup_threshold=float(cfg.distill.dedup_threshold))


def unlabeled_faces(cfg: DictConfig, teacher: Teacher, frame: pd.DataFrame, run_dir: Path) -> tuple[pd.DataFrame,
                                                                                                    list[dict]]:
    """The kept unlabelled faces as training rows (``path`` of the saved crop, the teacher's
    labels) and a per-source summary; writes the crops and ``manifest.csv``."""
    held = frame[frame["split"].isin(["val", "test"])]
    reader = make_reader(cfg, teacher, {file_sha256(p): s for p, s in zip(held["path"], held["split"], strict=True)})
    chip_dir = run_dir / CHIPS
    chip_dir.mkdir(parents=True, exist_ok=True)
    manifest, rows, sources = [], [], []
    for entry, records in reader.read(list(cfg.distill.unlabeled)):
        todo = [r for r in records if r.kept and r.chip is not None]
        outputs = teacher.label_chips([r.chip for r in todo])
        entry_rows = apply_teacher(records, outputs, float(cfg.distill.min_confidence))
        for row, record in zip(entry_rows, records, strict=True):
            if row["kept"]:
                k = row["_out"]
                path = chip_dir / f"{len(rows):06d}.jpg"
                cv2.imwrite(str(path), cv2.cvtColor(record.chip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                row["chip"] = str(path)
                rows.append({"image": f"{CHIPS}/{path.name}", "path": str(path), "age": float(outputs["age"][k]),
                             "gender": GENDERS.index(row["gender"]), "race": RACES.index(row["race"]),
                             "teacher_index": len(rows), **{f"_{t}": outputs[t][k] for t in ("age", "gender", "race")}})
            record.chip = None  # written or not used: the memory goes
        found = sum(1 for r in records if r.box is not None)
        kept = sum(1 for row in entry_rows if row["kept"])
        reasons = pd.Series([row["reason"] for row in entry_rows if not row["kept"]], dtype=str)
        summary = {"source": str(entry), "faces_found": found, "faces_kept": kept,
                   "not_used": {str(k): int(v) for k, v in reasons.value_counts().items()}}
        sources.append(summary)
        if kept == 0:
            log.warning("distill.unlabeled: %s: no faces kept (%d found; %s)", entry, found,
                        ", ".join(f"{v} {k}" for k, v in summary["not_used"].items()) or "nothing readable")
            print(f"{entry}: no faces kept from this source ({found} found)")
        else:
            log.info("distill.unlabeled: %s: %d of %d faces kept", entry, kept, found)
        manifest += entry_rows
    path = write_manifest(manifest, run_dir / "manifest.csv")
    print(f"Unlabelled faces: {len(rows)} kept; manifest written to {path}")
    table = pd.DataFrame(rows)
    if not table.empty:
        table["split"], table["copies"], table["weight"], table["labelled"] = "train", 1, 1.0, False
        table["age_bin"] = age_to_bin(table["age"], [float(e) for e in cfg.data.age_bin_edges])
    return table, sources


def training_faces(cfg: DictConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame``'s training split the student learns from: all, or with
    ``distill.train_limit`` that many, sampled by ``seed`` (sorted by image name)."""
    train = frame[frame["split"] == "train"]
    if cfg.distill.train_limit is not None and len(train) > int(cfg.distill.train_limit):
        train = train.sample(n=int(cfg.distill.train_limit), random_state=int(cfg.seed)).sort_values("image")
        log.info("distill.train_limit: %d of the teacher's %d training faces", len(train),
                 int((frame["split"] == "train").sum()))
    return train


def student_rows(frame: pd.DataFrame, train: pd.DataFrame, teacher_out: dict[str, np.ndarray],
                 extra: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The rows the student fits on: ``train`` (with ``teacher_out``, the teacher's outputs for
    them), ``frame``'s val rows (teacher outputs NaN: they keep their true labels) and the
    unlabelled ``extra`` faces (their outputs in ``_<task>`` columns). Returns the rows and the
    teacher's outputs per task, float32 (N, ...) in row order."""
    fit = pd.concat([train, frame[frame["split"] == "val"]]).assign(labelled=True).reset_index(drop=True)
    outputs = {t: np.full((len(fit), *np.shape(v)[1:]), np.nan, np.float32) for t, v in teacher_out.items()}
    train_at = np.flatnonzero(fit["split"].to_numpy() == "train")
    for t, v in teacher_out.items():
        outputs[t][train_at] = v
    if not extra.empty:
        for t in outputs:
            outputs[t] = np.concatenate([outputs[t], np.stack(extra[f"_{t}"].to_numpy()).astype(np.float32)])
        fit = pd.concat([fit, extra.drop(columns=[c for c in extra if c.startswith("_") or c == "teacher_index"])],
                        ignore_index=True)
    return fit, outputs


def distill_run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train a student on ``distill.teacher``'s outputs into ``<run dir>/model``; report both."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY).is_file():  # its model and report stay as they are
        raise ConfigError(f"hydra.run.dir: {run_dir} holds a finished distill run; give another folder")
    check_student_family(cfg)
    teacher = Teacher(cfg, Path(str(cfg.distill.teacher)))  # refuses a teacher without split.csv
    keras.utils.set_random_seed(int(cfg.seed))
    prepared = prepare_dataset(cfg.data, cfg.rebalance, run_dir, aligner=align_training_photos)
    frame = teacher_split(prepared.frame, teacher, cfg)
    write_split_csv(frame, run_dir / "split.csv")  # the teacher's split: the student's model folder carries it
    extra, sources = pd.DataFrame(), []
    if len(cfg.distill.unlabeled):
        extra, sources = unlabeled_faces(cfg, teacher, frame, run_dir)

    start = time.perf_counter()
    train = training_faces(cfg, frame)
    teacher_out = teacher.label_photos(train)
    log.info("teacher outputs for %d training faces (%d computed, the rest cached in %s)", len(train),
             teacher.cache.labelled, teacher.cache.path)
    fit, outputs = student_rows(frame, train, teacher_out, extra)
    targets = mix_targets(fit, outputs, float(cfg.distill.alpha), float(cfg.distill.temperature))

    trainer = student_trainer(cfg, frame)
    history = fit_student(trainer, fit, targets, cfg, run_dir)
    train_seconds = time.perf_counter() - start
    model_dir = run_dir / "model"
    trainer.save(model_dir, trained_with=OmegaConf.to_container(cfg, resolve=True))
    shutil.copy(run_dir / "split.csv", model_dir / "split.csv")
    shutil.copy(run_dir / "history.csv", model_dir / "history.csv")
    summary: dict = {
        "model_dir": str(model_dir), "teacher": str(teacher.dir), "teacher_identity": teacher.identity,
        "alpha": float(cfg.distill.alpha), "temperature": float(cfg.distill.temperature),
        "train_seconds": round(train_seconds, 1), "epochs_run": int(len(history)),
        "best_val_loss": float(history["val_loss"].min()),
        "labelled_training_faces": int(len(train)), "unlabelled_faces_used": int(len(extra)),
        "teacher_faces_labelled": int(teacher.cache.labelled), "teacher_cache": str(teacher.cache.path),
        "teacher_seconds": round(teacher.cache.seconds, 1), "sources": sources,
    }
    if cfg.export.tflite:
        summary["tflite"] = str(export_tflite(model_dir, Path(cfg.paths.cache), str(cfg.export.quantization)))
    (model_dir / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"Student saved to {model_dir}")

    rows = [describe(cfg, "teacher", teacher.dir, run_dir / "teacher"),
            describe(cfg, "student", model_dir, run_dir / "student")]
    report = write_report(run_dir, rows, {k: v for k, v in summary.items() if k != "sources"} | {"sources": sources})
    summary["test"] = {row["model"]: {k: row.get(k) for k in ("age_mae", "gender_accuracy", "race_accuracy",
                                                              "latency_ms", "tflite_mb", "keras_mb")}
                       for row in report["models"]}
    write_atomic(run_dir / SUMMARY, json.dumps(summary, indent=2, default=str) + "\n")  # marks the run finished
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # the finished model no longer needs them
    print(f"Teacher and student side by side: {run_dir / 'distill_report.md'}")
    return summary
