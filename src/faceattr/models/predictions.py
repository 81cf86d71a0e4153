"""Predictions on a split's rows: the one form every scorer returns.

Every scorer of a split (a family's trainer, or ``evaluation.served.ServedModel``) has
``predict(frame, tta_flip) -> Predictions``: ``age`` (N,) years clipped to the label range,
``gender`` (N, 2) and ``race`` (N, 5) probabilities, row-aligned with ``frame``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from faceattr.labels import AGE_RANGE

Predictions = dict[str, np.ndarray]  # age (N,) years, gender (N, 2) probs, race (N, 5) probs


def to_predictions(outputs: list[dict[str, Any]]) -> Predictions:
    """Average model outputs (e.g. image and mirror) into flat prediction arrays.

    ``outputs``: one dict per view with ``age`` (N,) or (N, 1) years, ``gender`` (N, 2) and
    ``race`` (N, 5) probabilities.
    """
    mean = {k: np.mean([np.asarray(o[k], dtype=np.float64) for o in outputs], axis=0) for k in outputs[0]}
    return {
        "age": np.clip(mean["age"].reshape(-1), *AGE_RANGE),
        "gender": mean["gender"],
        "race": mean["race"],
    }
