"""Keras targets of a data frame's rows, the one place labels become arrays for training.

Partial labels are kept (``models.losses`` takes them): ``age`` is an interval per face (an
exact age twice), gender and race ``-1`` where not labelled.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Upper end given to an open age group (years); ``models.losses.OPEN_END`` reads it the same way.
OPEN_END = 1000.0


def age_intervals(frame: pd.DataFrame) -> np.ndarray:
    """(N, 2) float32 ``[lo, hi]`` years per row: ``age_lo``/``age_hi`` where the frame has them,
    else ``[age, age]``; an open group's ``hi`` is ``OPEN_END``, no age ``[nan, nan]``."""
    if "age_lo" in frame and "age_hi" in frame:
        lo, hi = frame["age_lo"].to_numpy(np.float64), frame["age_hi"].to_numpy(np.float64)
    else:
        lo = hi = frame["age"].to_numpy(np.float64)
    hi = np.where(np.isposinf(hi), OPEN_END, hi)
    return np.stack([lo, hi], axis=1).astype(np.float32)


def label_arrays(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Keras targets of ``frame``'s rows: ``age`` (N, 2) float32 years (``age_intervals``),
    ``gender`` and ``race`` (N,) int32 class indices (-1: not labelled)."""
    return {
        "age": age_intervals(frame),
        "gender": frame["gender"].to_numpy(np.int32),
        "race": frame["race"].to_numpy(np.int32),
    }


def uses_weights(cfg, frame: pd.DataFrame) -> bool:
    """Whether training on ``frame`` feeds per-face sample weights: ``rebalance=weights``, or any
    weight other than 1 (a source's mixing weight, ``data.weight`` / ``data.sources.<name>.weight``)."""
    if cfg.rebalance.name == "weights":
        return True
    return "weight" in frame and not np.allclose(frame["weight"].to_numpy(float), 1.0)
