"""Everything an evaluation writes for one split.

``write_evaluation`` is called by ``evaluation.model_dir`` (after ``train --eval`` and by
``evaluate``) with the rows of the split scored (test, or val with ``evaluation.split=val``)
and the model's predictions on them; ``metrics.json`` names the split beside ``n``, the number of faces.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from faceattr import writes
from faceattr.config import EvaluationConfig, settings
from faceattr.evaluation import fairness, plots
from faceattr.evaluation.metrics import (
    age_by_bin_frame,
    age_report_frame,
    classification_report_frame,
    compute_metrics,
    predicted_classes,
)
from faceattr.labels import DEFAULT_AGE_BIN_EDGES, GENDERS, RACES

log = logging.getLogger(__name__)

#: Files ``write_evaluation`` always writes (plots also as SVG when configured).
OUTPUT_FILES: tuple[str, ...] = (
    "metrics.json", "report_gender.csv", "report_race.csv", "report_age.csv", "age_by_bin.csv",
    "predictions.csv", "fairness.csv", "confusion_gender.png", "confusion_race.png", "age_predictions.png",
    "faces_grid.png", "fairness.png",
)


def predictions_frame(frame: pd.DataFrame, predictions: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per test face: true and predicted labels, confidences and class probabilities.

    Columns: ``image``, ``age_true``, ``age_pred``, ``age_error`` (pred - true, years),
    ``gender_true``, ``gender_pred``, ``gender_confidence``, ``race_true``, ``race_pred``,
    ``race_confidence`` (class names; confidence = probability of the predicted class), then
    ``p_gender_<name>`` and ``p_race_<name>`` for every class when probabilities are given.
    """
    frame = frame.reset_index(drop=True)
    age_p = np.asarray(predictions["age"], dtype=float).reshape(-1)
    out = pd.DataFrame({
        "image": frame["image"] if "image" in frame else frame.index.astype(str),
        "age_true": frame["age"].to_numpy(float),
        "age_pred": age_p,
        "age_error": age_p - frame["age"].to_numpy(float),
    })
    probs = {}
    for task, names in (("gender", GENDERS), ("race", RACES)):
        pred = np.asarray(predictions[task])
        idx = predicted_classes(pred)
        out[f"{task}_true"] = [names[i] for i in frame[task].to_numpy(int)]
        out[f"{task}_pred"] = [names[i] for i in idx]
        if pred.ndim == 2:
            out[f"{task}_confidence"] = pred[np.arange(len(idx)), idx]
            probs.update({f"p_{task}_{name}": pred[:, j] for j, name in enumerate(names)})
    return pd.concat([out, pd.DataFrame(probs)], axis=1)


def _json_safe(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def write_evaluation(out_dir: Path, frame: pd.DataFrame, predictions: Mapping[str, np.ndarray],
                     eval_cfg: DictConfig | Mapping[str, Any] | None,
                     age_bin_edges: Sequence[float] = DEFAULT_AGE_BIN_EDGES,
                     history_csv: Path | None = None, split: str = "test") -> dict[str, float | int]:
    """Write the full evaluation of one split into ``out_dir``; return the metrics.

    ``frame``: the rows scored, test or val (``image``, ``path``, ``age`` in years, ``gender``
    and ``race`` class indices, ...). ``predictions``: row-aligned with ``frame``: ``age`` (N,) years,
    ``gender`` (N, 2) and ``race`` (N, 5) probabilities. ``eval_cfg``: the ``evaluation``
    config group (``plots``, ``formats``, ``dpi``, ``grid_faces``). ``age_bin_edges``: years.
    ``history_csv``: a Keras ``CSVLogger`` file for the training curves (skipped if None or
    missing). ``split``: the name of the split ``frame`` holds, recorded in ``metrics.json``
    beside ``n``, the number of faces scored.

    Writes ``metrics.json``, ``report_gender.csv``, ``report_race.csv``, ``report_age.csv``,
    ``age_by_bin.csv``, ``predictions.csv``, ``fairness.csv`` and the plots
    ``confusion_gender``, ``confusion_race``, ``age_predictions``, ``faces_grid``,
    ``fairness`` and ``training_curves`` (if a history is given) as PNG (+ SVG if configured); with
    ``evaluation.plots=false`` the files without the plots.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = frame.reset_index(drop=True)
    n = len(frame)
    y_true, y_pred = _truth_and_predictions(frame, predictions, split)
    eval_cfg = settings(EvaluationConfig, eval_cfg, "evaluation.")  # keys left out: the schema's defaults
    formats = [str(f) for f in eval_cfg.formats]
    dpi = int(eval_cfg.dpi)
    grid_faces = int(eval_cfg.grid_faces)
    edges = [float(e) for e in age_bin_edges]

    metrics = compute_metrics(y_true, y_pred)
    record = {**_json_safe(metrics), "split": split}  # val when choosing between models
    writes.write_text(out_dir / "metrics.json", writes.json_text(record))  # null for NaN or infinity
    for task in ("gender", "race"):
        classification_report_frame(task, y_true[task], y_pred[task]).to_csv(
            out_dir / f"report_{task}.csv", index=False, float_format="%.6g")
        if eval_cfg.plots:
            plots.plot_confusion(task, y_true[task], y_pred[task], out_dir / f"confusion_{task}", formats, dpi,
                                 where=f"the {split} split")
    age_report_frame(y_true["age"], y_pred["age"], edges).to_csv(out_dir / "report_age.csv", index=False,
                                                                 float_format="%.6g")
    age_by_bin_frame(y_true["age"], y_pred["age"], edges).to_csv(out_dir / "age_by_bin.csv", index=False,
                                                                 float_format="%.6g")
    predictions_frame(frame, y_pred).to_csv(out_dir / "predictions.csv", index=False, float_format="%.6g")
    fairness.write_fairness(out_dir, y_true, y_pred, formats, dpi, plot=eval_cfg.plots)
    if eval_cfg.plots:
        plots.plot_age(y_true["age"], y_pred["age"], out_dir / "age_predictions", edges, formats, dpi)
        plots.plot_faces_grid(frame, y_pred, out_dir / "faces_grid", grid_faces, formats, dpi)
        if history_csv is not None and Path(history_csv).is_file():
            plots.plot_training_curves(Path(history_csv), out_dir / "training_curves", formats, dpi)
        elif history_csv is not None:
            log.warning("%s not found; no training curves", history_csv)

    _log_metrics(split, n, metrics)
    log.info("evaluation reports and plots written to %s", out_dir)
    return metrics


def _truth_and_predictions(frame: pd.DataFrame, predictions: Mapping[str, np.ndarray],
                           split: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``write_evaluation``'s labels and predictions as arrays: ``age`` (N,) years, ``gender`` and
    ``race`` class indices (N,) true, probabilities (N, K) predicted; ``ValueError`` when the
    predictions' rows don't match ``frame``'s."""
    n = len(frame)
    for key in ("age", "gender", "race"):
        if len(np.asarray(predictions[key])) != n:
            raise ValueError(f"predictions[{key!r}] has {len(np.asarray(predictions[key]))} rows for {n} {split} rows")
    y_true = {"age": frame["age"].to_numpy(float), "gender": frame["gender"].to_numpy(int),
              "race": frame["race"].to_numpy(int)}
    y_pred = {"age": np.asarray(predictions["age"], dtype=float).reshape(-1),
              "gender": np.asarray(predictions["gender"]), "race": np.asarray(predictions["race"])}
    return y_true, y_pred


def _log_metrics(split: str, n: int, metrics: Mapping[str, float]) -> None:
    """The split's key figures as one log line."""
    log.info("%s split (n=%d): age MAE %.2f y, gender accuracy %.1f%%, race accuracy %.1f%% (balanced %.1f%%, "
             "macro F1 %.3f; recall %s)", split, n, metrics["age_mae"], 100 * metrics["gender_accuracy"],
             100 * metrics["race_accuracy"], 100 * metrics["race_balanced_accuracy"], metrics["race_macro_f1"],
             ", ".join(f"{r} {100 * metrics[f'race_recall_{r}']:.0f}%" for r in RACES if f"race_recall_{r}" in metrics))
