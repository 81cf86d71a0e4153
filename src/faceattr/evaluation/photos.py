"""``evaluate --labels PATH``: score a model on any labelled photo folder, as ``run`` sees it.

Each photo goes through the same ``FacePipeline`` as ``run --img`` (detector, alignment onto
the chip template, the model and its calibration). The largest face of a photo is taken as the
labelled person; a photo without a face counts as a miss (``no_face_rate``) and is left out of
the other figures, which are over the photos where a face was found.

Ages may be exact or groups (``data.labels_csv``). Both are scored as an interval [lo, hi] (an
exact age is [age, age]): the *interval error* of a prediction is its distance to the
interval, 0 inside it, signed (+ too old) in ``age_by_group.csv``. ``age_mae`` is reported
where exact ages exist.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from faceattr import writes
from faceattr.config import EvaluationConfig, settings
from faceattr.data.labels_csv import read_labels
from faceattr.errors import InputError
from faceattr.evaluation import fairness, plots
from faceattr.evaluation.metrics import (
    age_by_bin_frame,
    class_recalls,
    classification_report_frame,
    compute_metrics,
)
from faceattr.inference.images import read_image
from faceattr.inference.pipeline import FacePipeline
from faceattr.labels import DEFAULT_AGE_BIN_EDGES, GENDERS, RACES

if TYPE_CHECKING:  # the face pipeline (and TensorFlow Lite) load only when photos are scored
    from faceattr.inference.pipeline import FaceCrop

log = logging.getLogger(__name__)

#: Faces cropped before they go through the model together.
CHUNK = 256


def interval_error(pred: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Signed distance (years) from each predicted age to its true interval [lo, hi]: 0 inside,
    positive when predicted too old, negative when too young; NaN where there is no interval."""
    pred, lo, hi = (np.asarray(a, dtype=float) for a in (pred, lo, hi))
    return np.where(pred < lo, pred - lo, np.where(pred > hi, pred - hi, 0.0)) + np.where(np.isnan(lo), np.nan, 0.0)


def _group_name(lo: float, hi: float) -> str:
    if math.isinf(hi):
        return f"{lo:g}+"
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def age_by_group_frame(pred: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> pd.DataFrame:
    """Interval errors per true age group (photos with age groups; exact ages are grouped by
    ``labels.DEFAULT_AGE_BIN_EDGES`` instead, through ``metrics.age_by_bin_frame``).

    Columns: ``group``, ``lo``, ``hi``, ``n``, ``mean_pred`` (years), ``signed_error`` (mean
    signed interval error: + = predicted too old), ``interval_error`` (mean absolute),
    ``inside`` (share of predictions inside the group).
    """
    err = interval_error(pred, lo, hi)
    keys = sorted({(a, b) for a, b in zip(lo, hi, strict=True) if not np.isnan(a)})
    rows = []
    for a, b in keys:
        m = (lo == a) & (hi == b)
        rows.append({"group": _group_name(a, b), "lo": a, "hi": b, "n": int(m.sum()),
                     "mean_pred": float(np.mean(pred[m])), "signed_error": float(np.mean(err[m])),
                     "interval_error": float(np.mean(np.abs(err[m]))), "inside": float(np.mean(err[m] == 0))})
    return pd.DataFrame(rows, columns=["group", "lo", "hi", "n", "mean_pred", "signed_error", "interval_error",
                                       "inside"])


def predicted_codes(rows: pd.DataFrame, task: str) -> np.ndarray:
    """The ``<task>_pred`` class names of ``predict_photos``' rows as class indices (``labels``),
    to compare with the labelled ``<task>`` column; (N,) int."""
    names = GENDERS if task == "gender" else RACES
    return np.array([names.index(v) for v in rows[f"{task}_pred"]], dtype=int)


def photo_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """Headline figures from ``predict_photos``'s table (see the module docstring)."""
    found = table[table["found"]]
    n_read = int(table["read"].sum())
    out: dict[str, Any] = {"n": int(len(table)), "n_read": n_read, "n_unreadable": int(len(table) - n_read),
                           "n_no_face": int(n_read - len(found)),
                           "no_face_rate": float((n_read - len(found)) / n_read) if n_read else math.nan,
                           "aligned_share": float(found["aligned"].mean()) if len(found) else math.nan}
    exact = found[found["age"].notna()]
    out["n_age"] = int(len(exact))
    out["age_mae"] = float(np.mean(np.abs(exact["age_pred"] - exact["age"]))) if len(exact) else math.nan
    grouped = found[found["age_lo"].notna()]
    err = interval_error(grouped["age_pred"], grouped["age_lo"], grouped["age_hi"])
    out["n_age_interval"] = int(len(grouped))
    out["age_interval_error"] = float(np.mean(np.abs(err))) if len(grouped) else math.nan
    out["age_signed_interval_error"] = float(np.mean(err)) if len(grouped) else math.nan
    out["age_inside_share"] = float(np.mean(err == 0)) if len(grouped) else math.nan
    for task, names in (("gender", GENDERS), ("race", RACES)):
        rows = found[found[task] >= 0]
        out[f"n_{task}"] = int(len(rows))
        t, p = rows[task].to_numpy(int), predicted_codes(rows, task)
        out[f"{task}_accuracy"] = float(np.mean(t == p)) if len(rows) else math.nan
        recalls = class_recalls(t, p, names)
        out.update({f"{task}_recall_{name}": r for name, r in recalls.items()})
        out[f"{task}_balanced_accuracy"] = float(np.mean(list(recalls.values()))) if recalls else math.nan
    return out


def largest_face(faces: list[FaceCrop]) -> FaceCrop:
    """The labelled person of a photo: the largest of its ``FaceCrop``s (by detection box area)."""
    return max(faces, key=lambda f: f.detection.w * f.detection.h)


def predict_photos(pipeline, labels: pd.DataFrame, batch: int = CHUNK) -> pd.DataFrame:
    """Run ``pipeline`` (``inference.pipeline.FacePipeline``) over the labelled photos.

    Returns ``labels`` with, per photo: ``read``, ``found``, ``faces`` (count), ``aligned``, the
    largest face's box ``x``, ``y``, ``w``, ``h`` (pixels), ``age_pred`` (years), ``gender_pred``,
    ``race_pred`` (class names), ``gender_confidence``, ``race_confidence`` and ``p_race_<name>``.
    An unreadable photo is reported in one line and skipped (``read`` False).
    """
    table = labels.reset_index(drop=True).copy()
    n = len(table)
    cols: dict[str, list] = {k: [None] * n for k in ("read", "found", "faces", "aligned", "x", "y", "w", "h",
                                                     "age_pred", "gender_pred", "race_pred", "gender_confidence",
                                                     "race_confidence", *(f"p_race_{r}" for r in RACES))}
    pending: list[tuple[int, Any]] = []

    def flush() -> None:
        preds = pipeline.predict([face for _, face in pending])
        for (i, _), p in zip(pending, preds, strict=True):
            cols["age_pred"][i] = round(float(p.age), 2)
            cols["gender_pred"][i], cols["race_pred"][i] = p.gender, p.race
            cols["gender_confidence"][i] = round(p.gender_confidence, 4)
            cols["race_confidence"][i] = round(p.race_confidence, 4)
            for j, r in enumerate(RACES):
                cols[f"p_race_{r}"][i] = round(float(p.race_probs[j]), 5)
        pending.clear()

    for i, path in enumerate(tqdm(table["path"], desc="photos", unit="photo", file=sys.stderr)):
        try:
            image = read_image(path)
        except InputError as exc:
            tqdm.write(f"error: {exc}", file=sys.stderr)
            log.warning("%s", exc)
            cols["read"][i], cols["found"][i], cols["faces"][i] = False, False, 0
            continue
        faces = pipeline.crops(image)
        cols["read"][i], cols["found"][i], cols["faces"][i] = True, bool(faces), len(faces)
        if not faces:
            continue
        face = largest_face(faces)
        cols["aligned"][i] = face.aligned
        for k in ("x", "y", "w", "h"):
            cols[k][i] = getattr(face.detection, k)
        pending.append((i, face))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    for k, v in cols.items():
        table[k] = v
    table["found"] = table["found"].astype(bool)
    table["read"] = table["read"].astype(bool)
    return table


def write_photo_evaluation(out_dir: Path, table: pd.DataFrame, eval_cfg: Any, source: str,
                           pipeline=None) -> dict[str, Any]:
    """Write ``metrics.json``, ``predictions.csv``, the report CSVs, confusion matrices, age plots
    and the fairness breakdown of a labelled-photo evaluation into ``out_dir``; with the
    ``pipeline`` that scored the photos, also the face grids (``write_face_grids``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_cfg = settings(EvaluationConfig, eval_cfg, "evaluation.")  # keys left out: the schema's defaults
    formats = [str(f) for f in eval_cfg.formats]
    dpi = int(eval_cfg.dpi)
    metrics = photo_metrics(table)
    table.drop(columns=["path"]).to_csv(out_dir / "predictions.csv", index=False, float_format="%.6g")
    found = table[table["found"]]
    for task in ("gender", "race"):
        rows = found[found[task] >= 0]
        if rows.empty:
            continue
        t, p = rows[task].to_numpy(int), predicted_codes(rows, task)
        classification_report_frame(task, t, p).to_csv(out_dir / f"report_{task}.csv", index=False,
                                                        float_format="%.6g")
        if eval_cfg.plots:
            plots.plot_confusion(task, t, p, out_dir / f"confusion_{task}", formats, dpi, where="the labelled photos")
    exact = found[found["age"].notna()]
    if len(exact):
        age_by_bin_frame(exact["age"], exact["age_pred"], DEFAULT_AGE_BIN_EDGES).to_csv(
            out_dir / "age_by_bin.csv", index=False, float_format="%.6g")
        if eval_cfg.plots:
            plots.plot_age(exact["age"], exact["age_pred"], out_dir / "age_predictions", DEFAULT_AGE_BIN_EDGES,
                           formats, dpi)
    grouped = found[found["age_lo"].notna()]
    if len(grouped):
        group_pred, age_lo, age_hi = (grouped[c].to_numpy(float) for c in ("age_pred", "age_lo", "age_hi"))
        age_by_group_frame(group_pred, age_lo, age_hi).to_csv(out_dir / "age_by_group.csv", index=False,
                                                              float_format="%.6g")
        if eval_cfg.plots:
            plots.plot_age_groups(group_pred, age_lo, age_hi, out_dir / "age_groups", formats, dpi)
    full = found[(found["gender"] >= 0) & (found["race"] >= 0) & found["age_lo"].notna()]
    if len(full):
        pred = full["age_pred"].to_numpy(float)
        # The age each prediction is scored against: the nearest age inside its true interval.
        y_true = {"age": np.clip(pred, full["age_lo"].to_numpy(float), full["age_hi"].to_numpy(float)),
                  "gender": full["gender"].to_numpy(int), "race": full["race"].to_numpy(int)}
        y_pred = {"age": pred, "gender": predicted_codes(full, "gender"), "race": predicted_codes(full, "race")}
        fairness.write_fairness(out_dir, y_true, y_pred, formats, dpi, plot=eval_cfg.plots)
        metrics["race_macro_f1"] = compute_metrics(y_true, y_pred)["race_macro_f1"]
    if eval_cfg.plots and pipeline is not None:
        write_face_grids(out_dir, table, pipeline, int(eval_cfg.grid_faces), formats, dpi)
    writes.write_text(out_dir / "metrics.json", writes.json_text(  # null for NaN or infinity
        {**metrics, "split": "labels", "labels": source}))
    log.info("labelled photos (n=%d): no face %.1f%%, age interval error %.2f y (inside %.0f%%), MAE %s, "
             "gender %.1f%%, race %.1f%% (balanced %.1f%%)", metrics["n"], 100 * metrics["no_face_rate"],
             metrics["age_interval_error"], 100 * metrics["age_inside_share"],
             f"{metrics['age_mae']:.2f} y" if not math.isnan(metrics["age_mae"]) else "-",
             100 * metrics["gender_accuracy"], 100 * metrics["race_accuracy"], 100 * metrics["race_balanced_accuracy"])
    return metrics


def model_view(pipeline, path: str) -> np.ndarray | None:
    """What the model saw of a photo: its largest face as ``pipeline`` crops it, (S, S, 3) uint8
    RGB; None when the photo can't be read or has no face."""
    try:
        faces = pipeline.crops(read_image(path))
    except InputError:
        return None
    return largest_face(faces).image if faces else None


def _tile_text(rec: pd.Series) -> tuple[str, bool]:
    """A grid tile's title (true and predicted labels; ``?`` where not labelled) and whether the
    prediction is right: labelled gender and race right, age within 10 years of its group."""
    if not math.isnan(rec["age"]):
        true_age = f"{rec['age']:g}"
    elif not math.isnan(rec["age_lo"]):
        true_age = _group_name(rec["age_lo"], rec["age_hi"])
    else:
        true_age = "?"
    gender = GENDERS[int(rec["gender"])] if rec["gender"] >= 0 else "?"
    race = RACES[int(rec["race"])] if rec["race"] >= 0 else "?"
    off = float(np.nan_to_num(interval_error(rec["age_pred"], rec["age_lo"], rec["age_hi"])))
    right = (gender in ("?", rec["gender_pred"]) and race in ("?", rec["race_pred"]) and abs(off) <= 10)
    return (f"true: {true_age} y, {gender}, {race}\n"
            f"pred: {rec['age_pred']:.0f} y, {rec['gender_pred']} {rec['gender_confidence']:.0%}, "
            f"{rec['race_pred']} {rec['race_confidence']:.0%}"), right


def confident_mistakes(found: pd.DataFrame) -> pd.DataFrame:
    """The photos whose labelled gender or race was predicted wrong, the most confident wrong
    answer first (its probability, the larger of the two tasks' where both are wrong)."""
    gender_wrong = (found["gender"] >= 0) & (found["gender"] != predicted_codes(found, "gender"))
    race_wrong = (found["race"] >= 0) & (found["race"] != predicted_codes(found, "race"))
    confidence = np.maximum(np.where(gender_wrong, found["gender_confidence"].astype(float), 0.0),
                            np.where(race_wrong, found["race_confidence"].astype(float), 0.0))
    return found.assign(_wrong=confidence)[gender_wrong | race_wrong].sort_values(
        "_wrong", ascending=False, kind="stable").drop(columns="_wrong")


def write_face_grids(out_dir: Path, table: pd.DataFrame, pipeline, n: int, formats: list[str], dpi: int,
                     seed: int = 0) -> list[Path]:
    """``faces_grid``: the model's view of ``n`` photos with a face (a fixed random sample), and
    ``faces_mistakes``: of up to ``n`` photos whose gender or race it got wrong, the most confident
    first; true and predicted labels over each. The faces are cropped again with ``pipeline``
    (only these few, so nothing is held in memory over a large folder)."""
    found = table[table["found"]].reset_index(drop=True)
    written: list[Path] = []
    n = max(0, min(int(n), len(found)))
    if n == 0:
        return written
    sample = found.iloc[np.sort(np.random.default_rng(seed).choice(len(found), size=n, replace=False))]
    mistakes = confident_mistakes(found).head(n)
    for rows, stem, title in (
            (sample, "faces_grid", f"{n} photos as the model saw them: true vs predicted "
                                   "(green: all right, age within 10 y of the group)"),
            (mistakes, "faces_mistakes", f"the {len(mistakes)} most confident gender or race mistakes, "
                                         "as the model saw them")):
        if rows.empty:
            continue
        texts = [_tile_text(rec) for _, rec in rows.iterrows()]
        written += plots.plot_face_tiles([model_view(pipeline, p) for p in rows["path"]], [t for t, _ in texts],
                                         [ok for _, ok in texts], out_dir / stem, title, formats, dpi)
    return written


def evaluate_photos(cfg: Any, run_dir: Path, pipeline=None) -> dict[str, Any]:
    """``evaluate --labels PATH``: the model of ``model_path`` (or the shipped one) with the
    configured detector, over the photos of ``evaluation.labels``; reports into ``run_dir``."""
    source = str(cfg.evaluation.labels)
    labels = read_labels(source)  # a bad labels file fails before any model loads
    log.info("evaluating on %d labelled photos of %s", len(labels), source)
    pipeline = pipeline or FacePipeline.from_config(cfg)
    table = predict_photos(pipeline, labels, batch=max(CHUNK, int(cfg.run.batch_size)))
    if not table["read"].any():
        raise InputError(f"{source}: none of its {len(table)} photo(s) could be read (the reason for each is "
                         "printed above); nothing was scored")
    metrics = write_photo_evaluation(run_dir, table, cfg.evaluation, source, pipeline)
    print(f"{metrics['n']} photo(s): face found in {metrics['n_read'] - metrics['n_no_face']}, "
          f"no face in {metrics['n_no_face']} ({metrics['no_face_rate']:.1%}), unreadable {metrics['n_unreadable']}")
    print(summary_line(metrics))
    return metrics


def summary_line(m: dict[str, Any]) -> str:
    """One line of the headline figures (those the labels allow)."""
    parts = []
    if not math.isnan(m.get("age_mae", math.nan)):
        parts.append(f"age MAE {m['age_mae']:.2f} y")
    if not math.isnan(m.get("age_interval_error", math.nan)):
        parts.append(f"age {m['age_interval_error']:.2f} y outside the true group ({m['age_inside_share']:.0%} inside)")
    for task in ("gender", "race"):
        if not math.isnan(m.get(f"{task}_accuracy", math.nan)):
            parts.append(f"{task} {m[f'{task}_accuracy']:.1%} (balanced {m[f'{task}_balanced_accuracy']:.1%})")
    recalls = [f"{r} {m[f'race_recall_{r}']:.0%}" for r in RACES if f"race_recall_{r}" in m]
    if recalls:
        parts.append("race recall: " + ", ".join(recalls))
    return "; ".join(parts)
