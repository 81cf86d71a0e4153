"""One detected face (``Detection``) and the order of its five landmarks: the type every
detector returns (``detectors``) and alignment, cropping and tracking take."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Order of the five landmarks (image left/right, i.e. "left_eye" is the one further left).
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class Detection:
    """One face: box in original-image pixels, a score in [0, 1], optional landmarks.

    ``landmarks``: (5, 2) float32 (x, y) pixels in ``LANDMARK_NAMES`` order, or None.
    """

    x: int
    y: int
    w: int
    h: int
    score: float = 1.0
    landmarks: np.ndarray | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` in pixels."""
        return (self.x, self.y, self.w, self.h)
