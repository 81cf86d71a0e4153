"""Test-split metrics and per-task report tables.

Conventions (shared with ``report``, ``fairness`` and ``training``):

- ``y_true``: ``{"age": (N,) years, "gender": (N,) int, "race": (N,) int}``; class indices
  follow ``labels.GENDERS`` / ``labels.RACES``.
- ``y_pred``: ``{"age": (N,) years, "gender": (N, 2) probabilities, "race": (N, 5)
  probabilities}``. Class predictions may also be given as (N,) int indices.

Ages are in years throughout; accuracies, F1 and "within" shares are fractions in [0, 1].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from faceattr.labels import DEFAULT_AGE_BIN_EDGES, GENDERS, RACES, age_bin_labels, age_to_bin

log = logging.getLogger(__name__)

#: Class names of each classification task, in the order of the head's softmax units.
CLASS_NAMES: dict[str, tuple[str, ...]] = {"gender": GENDERS, "race": RACES}
#: Age errors (years) for which ``age_within_<t>`` shares are reported.
WITHIN_YEARS: tuple[int, ...] = (5, 10)


def class_names(task: str) -> tuple[str, ...]:
    """Class names of ``task`` ("gender" or "race")."""
    try:
        return CLASS_NAMES[task]
    except KeyError:
        raise ValueError(f"unknown classification task {task!r} (gender|race)") from None


def predicted_classes(pred: np.ndarray) -> np.ndarray:
    """Class indices (N,) from probabilities (N, C) (argmax) or from indices (N,)."""
    arr = np.asarray(pred)
    if arr.ndim == 2:
        return arr.argmax(axis=1).astype(int)
    if arr.ndim == 1:
        return arr.astype(int)
    raise ValueError(f"class predictions must be (N,) indices or (N, C) probabilities, got shape {arr.shape}")


def _ages(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=float).reshape(-1)


def _check_lengths(y_true: Mapping[str, np.ndarray], y_pred: Mapping[str, np.ndarray]) -> int:
    lengths = {f"{side}[{k}]": len(np.asarray(v)) for side, d in (("y_true", y_true), ("y_pred", y_pred))
               for k, v in d.items() if k in ("age", "gender", "race")}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"labels and predictions differ in length: {lengths}")
    return next(iter(lengths.values()), 0)


def age_summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, signed error (mean predicted - true: + = too old), R² (years) and within-5/10-year
    shares.

    ``y_true``, ``y_pred``: (N,) ages in years. Empty input gives NaN everywhere.
    """
    t, p = _ages(y_true), _ages(y_pred)
    out = {"n": float(len(t))}
    if len(t) == 0:
        return out | {"mae": math.nan, "rmse": math.nan, "signed_error": math.nan, "r2": math.nan,
                      **{f"within_{w}": math.nan for w in WITHIN_YEARS}}
    err = p - t
    abs_err = np.abs(err)
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    out["mae"] = float(abs_err.mean())
    out["rmse"] = float(np.sqrt(np.mean(err**2)))
    out["signed_error"] = float(err.mean())
    out["r2"] = float(1.0 - np.sum(err**2) / ss_tot) if ss_tot > 0 else math.nan
    for w in WITHIN_YEARS:
        out[f"within_{w}"] = float(np.mean(abs_err <= w))
    return out


def class_recalls(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Recall of each class present in ``y_true`` (N,) indices, given predicted indices (N,),
    keyed by class name in head order; their mean is the balanced accuracy."""
    t, p = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    return {name: float(np.mean(p[t == c] == c)) for c, name in enumerate(names) if np.any(t == c)}


def compute_metrics(y_true: Mapping[str, np.ndarray], y_pred: Mapping[str, np.ndarray]) -> dict[str, float | int]:
    """Headline metrics of one split (test, or val when choosing between models).

    Returns a flat dict of Python numbers: ``age_mae``, ``age_rmse``, ``age_bias`` (years),
    ``age_r2``, ``age_within_5``, ``age_within_10`` (share of faces with |error| <= 5 / 10
    years), ``gender_accuracy``, ``gender_macro_f1``, ``race_accuracy``, ``race_macro_f1``,
    ``race_balanced_accuracy`` (mean per-class recall), ``race_recall_<class>`` for each class
    present, and ``n`` (the number of faces scored).
    """
    n = _check_lengths(y_true, y_pred)
    age = age_summary(y_true["age"], y_pred["age"])
    metrics: dict[str, float | int] = {
        "age_mae": age["mae"],
        "age_rmse": age["rmse"],
        "age_bias": age["signed_error"],
        "age_r2": age["r2"],
        **{f"age_within_{w}": age[f"within_{w}"] for w in WITHIN_YEARS},
    }
    for task in ("gender", "race"):
        names = class_names(task)
        t = np.asarray(y_true[task]).astype(int)
        p = predicted_classes(y_pred[task])
        present = sorted(set(t.tolist()))
        metrics[f"{task}_accuracy"] = float(np.mean(t == p)) if n else math.nan
        # Macro over the classes present in the test labels: a class absent from the test set
        # would otherwise add a meaningless 0 to the average.
        metrics[f"{task}_macro_f1"] = (float(f1_score(t, p, labels=present, average="macro", zero_division=0))
                                       if n else math.nan)
        if task == "race":
            recalls = class_recalls(t, p, names)
            metrics["race_balanced_accuracy"] = float(np.mean(list(recalls.values()))) if recalls else math.nan
            metrics.update({f"race_recall_{name}": r for name, r in recalls.items()})
        missing = [names[c] for c in range(len(names)) if c not in present]
        if missing and n:
            log.warning("%s classes absent from the test labels: %s", task, ", ".join(missing))
    metrics["n"] = int(n)
    return metrics


def classification_report_frame(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support of ``task`` ("gender" or "race").

    ``y_true``: (N,) class indices; ``y_pred``: (N, C) probabilities or (N,) indices. One row
    per class (all classes of ``labels``, in head order, support 0 when absent), then
    ``macro avg`` and ``weighted avg`` rows. Columns: ``class``, ``precision``, ``recall``,
    ``f1``, ``support`` (count of true labels).
    """
    names = class_names(task)
    t = np.asarray(y_true).astype(int)
    p = predicted_classes(y_pred)
    idx = list(range(len(names)))
    prec, rec, f1, sup = precision_recall_fscore_support(t, p, labels=idx, zero_division=0)
    rows = [{"class": name, "precision": prec[i], "recall": rec[i], "f1": f1[i], "support": int(sup[i])}
            for i, name in enumerate(names)]
    present = [i for i in idx if sup[i] > 0]
    total = int(sup.sum())
    for label, weights in (("macro avg", None), ("weighted avg", sup[present])):
        if present:
            rows.append({"class": label,
                         "precision": float(np.average(prec[present], weights=weights)),
                         "recall": float(np.average(rec[present], weights=weights)),
                         "f1": float(np.average(f1[present], weights=weights)),
                         "support": total})
        else:
            rows.append({"class": label, "precision": math.nan, "recall": math.nan, "f1": math.nan, "support": 0})
    return pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support"])


def confusion_counts(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Confusion counts (C, C), rows = true class, columns = predicted class, in head order."""
    p = predicted_classes(y_pred)
    return confusion_matrix(np.asarray(y_true).astype(int), p, labels=list(range(len(class_names(task)))))


def age_by_bin_frame(y_true: np.ndarray, y_pred: np.ndarray,
                     edges: Sequence[float] = DEFAULT_AGE_BIN_EDGES) -> pd.DataFrame:
    """Age errors per true-age bin.

    ``y_true``, ``y_pred``: (N,) years; ``edges``: bin edges in years (``labels`` convention,
    half-open bins, last edge may be ``inf``). One row per bin, empty bins included with
    n = 0. Columns: ``bin``, ``lo``, ``hi``, ``n``, ``mae``, ``rmse``, ``signed_error`` (years;
    positive = predicted too old), ``mean_true``, ``mean_pred``, ``within_5``, ``within_10``.
    """
    t, p = _ages(y_true), _ages(y_pred)
    edges = [float(e) for e in edges]
    bins = age_to_bin(t, edges)
    rows = []
    for i, name in enumerate(age_bin_labels(edges)):
        mask = bins == i
        s = age_summary(t[mask], p[mask])
        rows.append({"bin": name, "lo": edges[i], "hi": edges[i + 1], "n": int(mask.sum()),
                     "mae": s["mae"], "rmse": s["rmse"], "signed_error": s["signed_error"],
                     "mean_true": float(t[mask].mean()) if mask.any() else math.nan,
                     "mean_pred": float(p[mask].mean()) if mask.any() else math.nan,
                     **{f"within_{w}": s[f"within_{w}"] for w in WITHIN_YEARS}})
    return pd.DataFrame(rows)


def age_report_frame(y_true: np.ndarray, y_pred: np.ndarray,
                     edges: Sequence[float] = DEFAULT_AGE_BIN_EDGES) -> pd.DataFrame:
    """The age report: an ``all`` row, then one row per true-age bin.

    ``y_true``, ``y_pred``: (N,) years; ``edges`` as in ``age_by_bin_frame``. Columns:
    ``group``, ``n``, ``mae``, ``rmse``, ``signed_error`` (years), ``r2`` (``all`` row only; R² inside a
    narrow bin says little), ``within_5``, ``within_10`` (shares in [0, 1]).
    """
    overall = age_summary(y_true, y_pred)
    cols = ["group", "n", "mae", "rmse", "signed_error", "r2", *(f"within_{w}" for w in WITHIN_YEARS)]
    rows = [{"group": "all", **overall, "n": int(overall["n"])}]
    for rec in age_by_bin_frame(y_true, y_pred, edges).to_dict("records"):
        rows.append({"group": rec["bin"], "r2": math.nan, **{k: rec[k] for k in cols if k in rec}})
    return pd.DataFrame(rows, columns=cols)
