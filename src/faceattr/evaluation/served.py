"""Predictions on a split's rows: the common form, and the model as ``run`` serves it.

Every scorer of a split (a family's trainer, or :class:`ServedModel`) has
``predict(frame, tta_flip) -> Predictions``: ``age`` (N,) years clipped to the label range,
``gender`` (N, 2) and ``race`` (N, 5) probabilities, row-aligned with ``frame``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from faceattr.labels import AGE_RANGE
from faceattr.models.preprocessing import load_face

if TYPE_CHECKING:
    from faceattr.inference.predictor import Predictor

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


class ServedModel:
    """Scores a split the way ``run`` serves the model (``evaluation.backend=tflite``): whole
    images through ``inference.Predictor``, the same resize as training, no feature cache."""

    def __init__(self, predictor: Predictor, chunk: int = 256):
        self.predictor = predictor
        self.chunk = chunk  # images read and predicted at a time

    def predict(self, frame: pd.DataFrame, tta_flip: bool) -> Predictions:
        """Predictions for ``frame``'s rows (``path`` column), as :func:`to_predictions`."""
        self.predictor.tta_flip = tta_flip
        size, paths = self.predictor.input_size, frame["path"].tolist()
        parts = []
        with tqdm(total=len(paths), desc=f"faces ({self.predictor.backend})", unit="img") as bar:
            for start in range(0, len(paths), self.chunk):
                batch = np.stack([load_face(p, size) for p in paths[start:start + self.chunk]]).astype(np.float32)
                parts.append(self.predictor.predict_arrays(batch))
                bar.update(len(batch))
        return to_predictions([{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}])
