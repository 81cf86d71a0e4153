"""One detected face (``Detection``): the type every detector returns (``detectors``) and
alignment, cropping and tracking take. Its landmarks come in ``faceattr.landmarks`` order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
