"""The face crop the model sees: a square around the detection, grown by a margin.

UTKFace's aligned-and-cropped chips show the whole head with some background, while
detectors return a tight box around eyes, nose and mouth. Growing the box by ``margin`` x its
size on each side brings a detection back to what the training faces looked like; the idea
follows yu4u/age-gender-estimation's demo (``xw1 = x1 - margin * w``, ...), except that we
keep the crop square and centred and pad with border replication where it leaves the image,
instead of clipping (clipping would stretch faces near an edge when resized to a square).
"""

from __future__ import annotations

import cv2
import numpy as np

from faceattr.inference.detection import Detection
from faceattr.models.preprocessing import resize_face


def square_box(box: tuple[float, float, float, float], margin: float,
               shift_y: float = 0.0) -> tuple[float, float, float]:
    """Centre and side of the margin crop of an ``(x, y, w, h)`` box, all in pixels.

    The side is ``max(w, h) * (1 + 2 * margin)``: ``margin`` x the box size on each side. The
    centre moves down by ``shift_y`` x the box height (UTKFace chips sit lower than a Haar box).
    """
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise ValueError(f"face box must have a positive size, got w={w} h={h}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return x + w / 2.0, y + h / 2.0 + shift_y * h, max(w, h) * (1.0 + 2.0 * margin)


def crop_square(image: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """The ``side`` x ``side`` pixel square centred on (cx, cy); outside parts replicate the border."""
    s = max(1, round(side))
    x0, y0 = round(cx - s / 2.0), round(cy - s / 2.0)
    H, W = image.shape[:2]
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(W, x0 + s), min(H, y0 + s)
    if ix1 <= ix0 or iy1 <= iy0:  # entirely outside: nothing to replicate from but the nearest edge
        ix0, iy0 = min(max(0, x0), W - 1), min(max(0, y0), H - 1)
        ix1, iy1 = ix0 + 1, iy0 + 1
    inner = image[iy0:iy1, ix0:ix1]
    top, left = iy0 - y0, ix0 - x0
    bottom, right = s - top - inner.shape[0], s - left - inner.shape[1]
    if top or left or bottom or right:
        inner = cv2.copyMakeBorder(inner, top, bottom, left, right, cv2.BORDER_REPLICATE)
    return inner


def crop_face(image_rgb: np.ndarray, detection: Detection, margin: float, out_size: int,
              shift_y: float = 0.0) -> np.ndarray:
    """The box crop of one face: (out_size, out_size, 3) uint8 RGB.

    ``image_rgb``: (H, W, 3) uint8. The detection box is grown by ``margin`` x its size on each
    side and made square (``square_box``). Faces with landmarks are aligned onto the chip
    template instead (``align.align_face``); this is its fallback and the crop of detectors
    without landmarks.
    """
    cx, cy, side = square_box(detection.box, margin, shift_y)
    return np.ascontiguousarray(resize_face(crop_square(image_rgb, cx, cy, side), int(out_size)), dtype=np.uint8)
