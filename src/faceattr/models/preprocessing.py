"""How a face becomes model input, written once for training, evaluation and inference.

Every path that feeds a model resizes with OpenCV's area interpolation (box averaging, the
right filter for downscaling) to a square RGB uint8 image; the model's own first layers
normalise it (``Rescaling`` for the CNN, ``Prewhiten`` for FaceNet). tf.data's
``tf.image.resize(method="area")`` is the same filter for the CNN's training pipeline.
"""

from __future__ import annotations

import cv2
import numpy as np

from faceattr.errors import InputError


def resize_face(face_rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (size, size, 3) uint8 RGB, area interpolation."""
    if face_rgb.shape[:2] == (size, size):
        return face_rgb
    interp = cv2.INTER_AREA if min(face_rgb.shape[:2]) >= size else cv2.INTER_LINEAR
    return cv2.resize(face_rgb, (size, size), interpolation=interp)


def load_face(path: str, size: int) -> np.ndarray:
    """Read an image file as a (size, size, 3) uint8 RGB face (the whole image is the face)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{path}: not an image or unreadable")
    return resize_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)
