"""A split's evaluation across training sources: each source's figures apart, and the mix.

A model trained on several sources (``data.sources``: UTKFace chips, FairFace photos, ...) is
judged on every source's own held-out faces, since one number over the mix would hide a loss on
the smaller or harder one. ``write_split_evaluation`` writes:

- the rows with exact ages and full labels (UTKFace's): the full report at ``out_dir`` itself,
  as a single-source evaluation always wrote it (``report.write_evaluation``);
- every source apart under ``out_dir/sources/<name>/``: the full report for a source of exact
  ages, or, for a source of age groups and partial labels, the labelled-photo report
  (``photos.write_photo_evaluation``: the age as the distance outside the true group);
- ``metrics.json`` at ``out_dir`` gains ``sources`` (each source's headline figures) and ``mix``
  (gender and race accuracy, and the age interval error, over every labelled face of the split).

A split of one source is written as that source's report alone: with exact ages, exactly as
before sources existed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from faceattr import writes
from faceattr.evaluation.metrics import predicted_classes
from faceattr.evaluation.photos import interval_error, write_photo_evaluation
from faceattr.evaluation.report import write_evaluation
from faceattr.labels import GENDERS, RACES

log = logging.getLogger(__name__)

#: The figures of each source copied into the split's ``metrics.json``.
HEADLINE = ("n", "age_mae", "age_interval_error", "age_inside_share", "gender_accuracy", "race_accuracy",
            "race_balanced_accuracy", "race_recall_others", "race_macro_f1")


def _full_labels(frame: pd.DataFrame) -> np.ndarray:
    return (frame["age"].notna() & (frame["gender"] >= 0) & (frame["race"] >= 0)).to_numpy()


def photo_table(frame: pd.DataFrame, predictions: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """``frame``'s rows and predictions in the table ``photos.write_photo_evaluation`` reads (every
    face was read and found: a split's faces are chips already on the template)."""
    frame = frame.reset_index(drop=True)
    table = pd.DataFrame({
        "file": frame["image"], "path": frame["path"], "age": frame["age"].to_numpy(float),
        "age_lo": frame["age_lo"].to_numpy(float), "age_hi": frame["age_hi"].to_numpy(float),
        "gender": frame["gender"].to_numpy(int), "race": frame["race"].to_numpy(int),
        "read": True, "found": True, "faces": 1,
        "aligned": (frame["chip"] == "aligned").to_numpy() if "chip" in frame else True,
        "age_pred": np.round(np.asarray(predictions["age"], float).reshape(-1), 2),
    })
    for task, names in (("gender", GENDERS), ("race", RACES)):
        probs = np.asarray(predictions[task])
        idx = predicted_classes(probs)
        table[f"{task}_pred"] = [names[i] for i in idx]
        table[f"{task}_confidence"] = np.round(probs[np.arange(len(idx)), idx], 4)
    for j, name in enumerate(RACES):
        table[f"p_race_{name}"] = np.round(np.asarray(predictions["race"])[:, j], 5)
    return table


def mix_metrics(frame: pd.DataFrame, predictions: Mapping[str, np.ndarray]) -> dict[str, float | int]:
    """Gender and race accuracy over the faces labelled for each, and the mean years outside the
    true age interval (the MAE for exact ages) over the faces with an age, across all sources."""
    frame = frame.reset_index(drop=True)
    out: dict[str, float | int] = {"n": len(frame)}
    for task in ("gender", "race"):
        labelled = frame[task].to_numpy(int) >= 0
        hits = predicted_classes(np.asarray(predictions[task]))[labelled] == frame[task].to_numpy(int)[labelled]
        out[f"{task}_accuracy"] = float(hits.mean()) if labelled.any() else math.nan
    aged = frame["age_lo"].notna().to_numpy()
    err = interval_error(np.asarray(predictions["age"], float).reshape(-1)[aged], frame["age_lo"].to_numpy(float)[aged],
                         frame["age_hi"].to_numpy(float)[aged])
    out["age_interval_error"] = float(np.mean(np.abs(err))) if aged.any() else math.nan
    return out


def _subset(predictions: Mapping[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[mask] for k, v in predictions.items()}


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(metrics.get(k), float) and math.isnan(metrics[k]) else metrics.get(k))
            for k in HEADLINE if k in metrics}


def write_split_evaluation(out_dir: Path, frame: pd.DataFrame, predictions: Mapping[str, np.ndarray],
                           eval_cfg: Any, age_bin_edges: Sequence[float], history_csv: Path | None,
                           split: str) -> dict[str, Any]:
    """Write the evaluation of ``frame`` (one split's rows, any sources) into ``out_dir``; returns
    the metrics (see the module docstring). ``predictions`` are row-aligned with ``frame``."""
    frame = frame.reset_index(drop=True)
    predictions = {k: np.asarray(v) for k, v in predictions.items()}
    names = list(dict.fromkeys(frame["source"])) if "source" in frame else []
    full = _full_labels(frame)
    if len(names) <= 1:  # one source: its report alone
        if full.all():
            return write_evaluation(out_dir, frame, predictions, eval_cfg, age_bin_edges, history_csv, split)
        return write_photo_evaluation(out_dir, photo_table(frame, predictions), eval_cfg, split)
    out_dir = Path(out_dir)
    if full.any():
        metrics: dict[str, Any] = dict(write_evaluation(out_dir, frame[full], _subset(predictions, full), eval_cfg,
                                                        age_bin_edges, history_csv, split))
    else:
        metrics = dict(write_photo_evaluation(out_dir, photo_table(frame, predictions), eval_cfg, split))
    metrics["sources"] = {}
    for name in names:
        rows = (frame["source"] == name).to_numpy()
        sub_dir = out_dir / "sources" / str(name)
        part, part_pred = frame[rows], _subset(predictions, rows)
        if _full_labels(part).all():
            found = write_evaluation(sub_dir, part, part_pred, eval_cfg, age_bin_edges, None, split)
        else:
            found = write_photo_evaluation(sub_dir, photo_table(part, part_pred), eval_cfg, f"{name} {split}")
        metrics["sources"][name] = _headline({**found, "n": int(rows.sum())})
    metrics["mix"] = _headline(mix_metrics(frame, predictions))
    record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    writes.write_text(out_dir / "metrics.json", writes.json_text({**record, "split": split}))  # valid JSON
    for name, m in metrics["sources"].items():
        log.info("%s split, %s (n=%d): %s", split, name, m["n"], ", ".join(
            f"{k} {v:.3f}" for k, v in m.items() if k != "n" and isinstance(v, float)))
    log.info("%s split, all sources (n=%d): gender %.1f%%, race %.1f%%, age %.2f y outside the true interval",
             split, metrics["mix"]["n"], 100 * (metrics["mix"]["gender_accuracy"] or math.nan),
             100 * (metrics["mix"]["race_accuracy"] or math.nan), metrics["mix"]["age_interval_error"] or math.nan)
    return metrics
