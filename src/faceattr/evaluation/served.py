"""The model as ``run`` serves it, scoring a split's rows.

:class:`ServedModel` is a scorer like a family's trainer: ``predict(frame, tta_flip)`` returns
``models.predictions.Predictions`` (the form every scorer returns), row-aligned with ``frame``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from faceattr.models.predictions import Predictions, to_predictions
from faceattr.models.preprocessing import load_face

if TYPE_CHECKING:
    from faceattr.inference.predictor import Predictor


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
