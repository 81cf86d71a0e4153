"""Decision rules fitted on a model's validation split and applied to its raw outputs.

Two biases of a model trained on UTKFace show most on other people's photos:

- **The rare race class.** ``others`` is 7 % of UTKFace, and an argmax over the race head
  almost never picks it. Logit adjustment (Menon et al., "Long-tail learning via logit
  adjustment", ICLR 2021) subtracts ``tau * log(prior)`` from each class's log-probability,
  so a class is no longer penalised for being rare; ``tau = 1`` targets balanced accuracy.
  ``fit_race_bias`` picks ``tau`` on the validation split (``race_bias`` holds the offsets).
- **Age pulled toward the middle.** A regressor's errors shrink its predictions toward the
  mean age: children come out older and the old younger. ``fit_age_map`` measures the mean
  prediction in bands of true age on the validation split and maps each predicted age back
  onto the true age that produces it on average (a monotone piecewise-linear map,
  ``age_map``), blended in by the share chosen on validation.

A model's ``model_info.json`` carries its ``calibration`` (``Calibration.to_dict``); ``Predictor``
applies it to every prediction, so ``run``, ``evaluate`` and ``evaluate --labels`` agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from faceattr.labels import AGE_RANGE

#: Probabilities are floored here before the log (a softmax output can round to 0).
EPS = 1e-7


@dataclass(frozen=True)
class Calibration:
    """``race_bias``: (C,) offsets added to the race log-probabilities, or None. ``age_map``:
    (predicted ages, calibrated ages), increasing knots in years, or None; outside the knots the
    map continues with slope 1."""

    race_bias: tuple[float, ...] | None = None
    age_map: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def apply(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calibrated copies of ``age`` (N,) years (mapped ages clipped to ``labels.AGE_RANGE``)
        and ``race`` (N, C) probabilities; other keys (``gender``) pass through."""
        out = dict(outputs)
        if self.race_bias is not None:
            out["race"] = adjust_probabilities(np.asarray(outputs["race"]), np.asarray(self.race_bias))
        if self.age_map is not None:
            out["age"] = np.clip(map_ages(np.asarray(outputs["age"]), *self.age_map), *AGE_RANGE)
        return out

    def to_dict(self) -> dict:
        return {"race_bias": list(self.race_bias) if self.race_bias is not None else None,
                "age_map": [list(k) for k in self.age_map] if self.age_map is not None else None}

    @classmethod
    def from_dict(cls, raw: Mapping | None) -> Calibration:
        """From ``to_dict``'s form; None or {} gives the identity."""
        raw = raw or {}
        bias = raw.get("race_bias")
        amap = raw.get("age_map")
        return cls(tuple(float(b) for b in bias) if bias is not None else None,
                   (tuple(map(float, amap[0])), tuple(map(float, amap[1]))) if amap is not None else None)


def adjust_probabilities(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Softmax of ``log(probs) + bias`` along the last axis; (N, C) float32."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)) + np.asarray(bias, dtype=np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def map_ages(ages: np.ndarray, knots_pred: Sequence[float], knots_true: Sequence[float]) -> np.ndarray:
    """Piecewise-linear map of ages (years) through the knots, slope 1 beyond either end."""
    a = np.asarray(ages, dtype=np.float64)
    xp, fp = np.asarray(knots_pred, dtype=np.float64), np.asarray(knots_true, dtype=np.float64)
    out = np.interp(a, xp, fp)
    out = np.where(a < xp[0], fp[0] + (a - xp[0]), out)
    out = np.where(a > xp[-1], fp[-1] + (a - xp[-1]), out)
    return out.astype(np.float32)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y``."""
    recalls = [float(np.mean(pred[y == c] == c)) for c in range(n_classes) if np.any(y == c)]
    return float(np.mean(recalls))


def fit_race_bias(probs: np.ndarray, y: np.ndarray, taus: Sequence[float] = tuple(np.arange(0, 1.01, 0.1)),
                  max_accuracy_drop: float = 0.003,
                  groups: np.ndarray | None = None) -> tuple[np.ndarray, float, list[dict]]:
    """Logit adjustment for the race head, chosen on validation predictions.

    ``probs``: (N, C) validation probabilities; ``y``: (N,) true classes. The prior is the class
    share in ``y`` (the validation split is stratified like the training split). Of the ``taus``
    whose accuracy is at most ``max_accuracy_drop`` below the unadjusted one, the one with the
    best balanced accuracy wins (ties: the smaller). ``groups`` (N,), e.g. each face's training
    source: the accuracy may drop by no more than that within every group, so a gain on one
    source can't pay for a loss on another. Returns (bias (C,), tau, one row per tau).
    """
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups if groups is not None else np.zeros(len(y)), dtype=object)
    names = sorted(set(groups)) if len(set(groups)) > 1 else []
    c = probs.shape[1]
    prior = np.bincount(y, minlength=c).astype(np.float64) / len(y)
    prior = np.where(prior > 0, prior, prior.max())  # a class absent from y is not boosted
    log_prior = np.log(prior)
    rows = []
    for tau in taus:
        pred = adjust_probabilities(probs, -tau * log_prior).argmax(axis=1)
        rows.append({"tau": round(float(tau), 4), "accuracy": float(np.mean(pred == y)),
                     **{f"accuracy_{g}": float(np.mean(pred[groups == g] == y[groups == g])) for g in names},
                     "balanced_accuracy": balanced_accuracy(y, pred, c),
                     **{f"recall_{k}": float(np.mean(pred[y == k] == k)) if np.any(y == k) else float("nan")
                        for k in range(c)}})
    keys = ["accuracy", *(f"accuracy_{g}" for g in names)]
    allowed = [r for r in rows if all(r[k] >= rows[0][k] - max_accuracy_drop for k in keys)]
    best = max(allowed, key=lambda r: (round(r["balanced_accuracy"], 6), -r["tau"]))
    bias = -best["tau"] * log_prior
    return bias - bias[0], best["tau"], rows  # offsets relative to the first class (softmax ignores a shift)


def fit_age_map(pred: np.ndarray, true: np.ndarray, bands: int = 20,
                shares: Sequence[float] = tuple(np.arange(0, 1.01, 0.1)),
                max_mae_increase: float = 0.05) -> tuple[tuple[tuple[float, ...], tuple[float, ...]] | None, float,
                                                         list[dict]]:
    """A monotone map that undoes the pull toward the middle, chosen on validation predictions.

    ``pred``, ``true``: (N,) ages in years. The faces are cut into ``bands`` equal-count bands
    of true age; in each, the mean prediction and the mean true age give one knot (predictions
    made monotone in true age by isotonic regression first). The map is blended with the
    identity by ``share``; of the ``shares`` whose MAE is at most ``max_mae_increase`` years
    above the uncalibrated one, the one with the smallest mean absolute signed error over the
    bands wins. Returns (knots or None for share 0, share, one row per share).
    """
    from sklearn.isotonic import IsotonicRegression  # deferred: scikit-learn; `run` only applies a map

    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    order = np.argsort(true, kind="stable")
    groups = np.array_split(order, bands)
    mean_true = np.array([true[g].mean() for g in groups])
    mean_pred = np.array([pred[g].mean() for g in groups])
    mono = IsotonicRegression(increasing=True).fit(mean_true, mean_pred).predict(mean_true)
    # Equal predictions in neighbouring bands would make the inverse a step: keep the knots apart.
    mono = np.maximum.accumulate(mono + np.arange(len(mono)) * 1e-3)
    band_of = np.empty(len(true), dtype=int)
    for i, g in enumerate(groups):
        band_of[g] = i
    rows = []
    for share in shares:
        knots = (tuple(mono.round(3)), tuple((share * mean_true + (1 - share) * mono).round(3)))
        mapped = map_ages(pred, *knots)
        err = mapped - true
        band_bias = np.array([err[band_of == i].mean() for i in range(len(groups))])
        rows.append({"share": round(float(share), 4), "mae": float(np.abs(err).mean()),
                     "mean_abs_band_bias": float(np.abs(band_bias).mean()), "knots": knots})
    base = rows[0]["mae"]
    allowed = [r for r in rows if r["mae"] <= base + max_mae_increase]
    best = min(allowed, key=lambda r: (round(r["mean_abs_band_bias"], 6), r["share"]))
    knots = best["knots"] if best["share"] > 0 else None
    return knots, best["share"], [{k: v for k, v in r.items() if k != "knots"} for r in rows]
