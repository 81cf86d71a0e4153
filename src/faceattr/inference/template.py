"""The chip template and the similarity fit that alignment (``align``) is built on.

``ChipTemplate`` says where the five landmarks (``faceattr.landmarks.LANDMARK_NAMES``) sit in a training
chip; ``similarity`` is the least-squares similarity transform (rotation, uniform scale, shift)
between two point sets and ``residual`` how well it fits. Plain NumPy, importing no detector, so
a detector (``blazeface``) can carry its own keypoints onto the template's landmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from faceattr.landmarks import LANDMARK_NAMES

#: UTKFace's chip template: where MTCNN puts the five landmarks (``LANDMARK_NAMES`` order) in a
#: training chip, as fractions of the chip side (x right, y down). The median over the 1,964 of
#: 2,000 random training-split chips where MTCNN found a face; measured with
#: ``python -m faceattr.inference.align <UTKFace folder> saved_model/facenet/split.csv`` (``main``).
UTKFACE_TEMPLATE: tuple[tuple[float, float], ...] = (
    (0.2936, 0.2844), (0.6845, 0.2868), (0.4877, 0.5170), (0.3121, 0.6850), (0.6638, 0.6865),
)
#: Largest RMS distance (in interocular distances) between a face's landmarks, carried by the
#: fitted similarity, and the template for the face to count as aligned. Over the training chips
#: the median is 0.067 and the 99.5th percentile 0.162 (``main`` prints them); a turned head
#: (profile) goes beyond.
MAX_RESIDUAL = 0.2


@dataclass(frozen=True)
class ChipTemplate:
    """Landmark positions in a training chip: ``points`` (5, 2) fractions of the chip side."""

    points: tuple[tuple[float, float], ...] = UTKFACE_TEMPLATE
    max_residual: float = MAX_RESIDUAL

    def at(self, size: int) -> np.ndarray:
        """(5, 2) float64 pixel positions in a ``size`` x ``size`` chip."""
        return np.asarray(self.points, dtype=np.float64) * float(size)

    @property
    def eye_distance(self) -> float:
        """Distance between the two eyes, as a fraction of the chip side."""
        (lx, ly), (rx, ry) = self.points[:2]
        return math.hypot(rx - lx, ry - ly)

    def to_dict(self) -> dict:
        return {"landmarks": list(LANDMARK_NAMES), "points": [list(p) for p in self.points],
                "max_residual": self.max_residual}

    @classmethod
    def from_dict(cls, raw: dict | None) -> ChipTemplate:
        """From ``to_dict``'s form (a model's ``model_info.json``); None gives UTKFace's template."""
        if not raw:
            return cls()
        points = tuple((float(x), float(y)) for x, y in raw["points"])
        if len(points) != len(LANDMARK_NAMES):
            raise ValueError(f"chip template: expected {len(LANDMARK_NAMES)} points, got {len(points)}")
        return cls(points, float(raw.get("max_residual", MAX_RESIDUAL)))


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity transform (rotation, uniform scale, shift) that carries the (K, 2)
    points ``src`` closest to ``dst`` in least squares (Umeyama's closed form, no reflection)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    var = float((s**2).sum()) / len(src)
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    flip = np.diag([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(sig) @ flip)) / var if var > 0 else 1.0
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def residual(landmarks: np.ndarray, m: np.ndarray, template_px: np.ndarray) -> float:
    """RMS distance between the landmarks carried by ``m`` and the template, in units of the
    template's eye distance (0 = a perfect fit)."""
    moved = np.asarray(landmarks, dtype=np.float64) @ m[:, :2].T + m[:, 2]
    eye = float(np.linalg.norm(template_px[1] - template_px[0]))
    return float(np.sqrt(((moved - template_px) ** 2).sum(axis=1).mean())) / eye
