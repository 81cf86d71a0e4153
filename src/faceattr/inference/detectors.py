"""Face detectors behind one small interface: ``detect(image_bgr) -> list[Detection]``.

``conf/detector/<name>.yaml`` picks one by name from the table ``faceattr.config.DETECTORS``
(name -> class, each built by its ``from_settings``):

- ``haar``: OpenCV 4's frontal-face Haar cascade. Fast, CPU only, no landmarks, no score.
- ``mtcnn``: MTCNN with the ``mtcnn`` package's weights, run in NumPy (``mtcnn_numpy``). Finds
  faces in real photos, gives a confidence and five landmarks, which ``align`` uses to map each
  face onto the training chips' template.
- ``blazeface``: BlazeFace short range through LiteRT (``blazeface``): ~2 ms a 640x480 frame, a
  score and four keypoints carried onto MTCNN's five landmarks, for faces that fill a good part
  of the picture (webcams, portraits).
- ``none``: no detection; the whole image is one face (pre-cropped chips such as UTKFace).

Boxes are always in the pixels of the image passed in, even when a large image was
downscaled to ``max_side`` for detection.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from omegaconf import OmegaConf

from faceattr.config import DETECTORS, DetectorConfig
from faceattr.config import settings as config_settings
from faceattr.errors import ConfigError, InputError, ModelError
from faceattr.inference.detection import Detection

log = logging.getLogger(__name__)

HAAR_CASCADE = "haarcascade_frontalface_default.xml"


class Detector(Protocol):
    """What every detector offers. Its class (named in ``faceattr.config.DETECTORS``) also has
    ``from_settings(settings, cache_dir) -> detector``, which ``make_detector`` calls."""

    name: str

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Faces in an (H, W, 3) uint8 BGR image, boxes in its pixels."""
        ...


def _check_image(image_bgr: np.ndarray) -> None:
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        shape = getattr(image_bgr, "shape", None)
        raise InputError(f"detector: expected an (H, W, 3) BGR image, got shape {shape}")


def _downscale(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """Shrink ``image`` so its longer side is at most ``max_side``; returns (image, scale<=1)."""
    longest = max(image.shape[:2])
    if not max_side or longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _to_original(x: float, y: float, w: float, h: float, scale: float, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Scale a box found in the downscaled image back to original pixels, clipped to the image."""
    H, W = shape[:2]
    x0, y0 = max(0, round(float(x) / scale)), max(0, round(float(y) / scale))
    x1, y1 = min(W, round(float(x + w) / scale)), min(H, round(float(y + h) / scale))
    return int(x0), int(y0), int(max(1, x1 - x0)), int(max(1, y1 - y0))


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (``cv2.data``); score is always 1.0 (no confidence)."""

    name = "haar"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 40,
                 max_side: int | None = 1280) -> None:
        if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
            # OpenCV 5 moved the cascades out of the main package.
            raise ModelError(f"OpenCV {cv2.__version__} has no Haar cascades (cv2.CascadeClassifier); "
                             "install opencv-python<5 or use detector=mtcnn")
        path = Path(cv2.data.haarcascades) / HAAR_CASCADE
        if not path.is_file():
            raise ModelError(f"{path}: Haar cascade missing from the OpenCV install; reinstall opencv-python<5")
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ModelError(f"{path}: cannot load the Haar cascade")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.max_side = int(max_side) if max_side else None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], cache_dir: str | Path | None = None) -> HaarDetector:
        """Built from a filled ``detector`` node (``detector_settings``); ``cache_dir`` is unused."""
        return cls(scale_factor=settings["scale_factor"], min_neighbors=settings["min_neighbors"],
                   min_size=settings["min_size"], max_side=settings["max_side"])

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        _check_image(image_bgr)
        small, scale = _downscale(image_bgr, self.max_side)
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        boxes = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                               minSize=(self.min_size, self.min_size))
        out = [Detection(*_to_original(*b, scale, image_bgr.shape)) for b in np.asarray(boxes).reshape(-1, 4)]
        log.debug("haar: %d face(s) in %dx%d image", len(out), image_bgr.shape[1], image_bgr.shape[0])
        return out


class MTCNNDetector:
    """MTCNN with the ``mtcnn`` package's weights (they ship in its wheel), run in NumPy
    (``mtcnn_numpy``: no TensorFlow import); keeps confidence and five landmarks.

    ``min_size``: smallest face found, pixels of the (possibly downscaled) detection image.
    ``cache_dir``: where the weights are kept as a plain ``.npz`` after the first load.
    """

    name = "mtcnn"

    def __init__(self, min_confidence: float = 0.9, min_size: int = 40, max_side: int | None = 1280,
                 cache_dir: str | Path | None = None) -> None:
        from faceattr.inference.mtcnn_numpy import NumpyMTCNN  # deferred: only the chosen detector's module

        self._mtcnn = NumpyMTCNN(Path(cache_dir) if cache_dir else None)
        self.min_confidence = float(min_confidence)
        self.min_size = int(min_size)
        self.max_side = int(max_side) if max_side else None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], cache_dir: str | Path | None = None) -> MTCNNDetector:
        """Built from a filled ``detector`` node (``detector_settings``); ``cache_dir`` keeps the weights."""
        return cls(min_confidence=settings["min_confidence"], min_size=settings["min_size"],
                   max_side=settings["max_side"], cache_dir=cache_dir)

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        _check_image(image_bgr)
        small, scale = _downscale(image_bgr, self.max_side)
        if min(small.shape[:2]) < self.min_size:  # smaller than the smallest face sought
            return []
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)  # MTCNN was trained on RGB
        out = []
        # Rows: x1, y1, x2, y2, confidence, the 5 landmark x's, then their 5 y's (LANDMARK_NAMES order).
        for row in self._mtcnn.detect(rgb, min_face=self.min_size):
            score = float(row[4])
            if score < self.min_confidence:
                continue
            landmarks = (np.stack([row[5:10], row[10:15]], axis=1) / scale).astype(np.float32)
            box = _to_original(row[0], row[1], row[2] - row[0], row[3] - row[1], scale, image_bgr.shape)
            out.append(Detection(*box, score=score, landmarks=landmarks))
        log.debug("mtcnn: %d face(s) >= %.2f in %dx%d image", len(out), self.min_confidence,
                  image_bgr.shape[1], image_bgr.shape[0])
        return out


class WholeImageDetector:
    """No detection: the whole image is one face (for pre-cropped faces)."""

    name = "none"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], cache_dir: str | Path | None = None) -> WholeImageDetector:
        """Takes no settings."""
        return cls()

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        _check_image(image_bgr)
        h, w = image_bgr.shape[:2]
        return [Detection(0, 0, w, h, 1.0)]


def detector_settings(detector_cfg: Any, video: bool = False) -> dict[str, Any]:
    """A ``conf/detector/*.yaml`` node (or a partial dict) filled from the schema
    (``faceattr.config.DetectorConfig``) as a plain dict; with ``video``, its ``video`` entries
    that are set override the others (a coarser image pyramid, or another detector altogether,
    that keeps a live stream fast)."""
    filled = OmegaConf.to_container(config_settings(DetectorConfig, detector_cfg, "detector."), resolve=True)
    video_settings = filled.pop("video")
    if video:
        filled.update({key: value for key, value in video_settings.items() if value is not None})
    return filled


def make_detector(detector_cfg: Any, video: bool = False, cache_dir: str | Path | None = None) -> Detector:
    """The detector named by ``detector_cfg.name`` (a ``conf/detector/*.yaml`` node or a dict):
    its class from ``faceattr.config.DETECTORS`` (imported on first use), built from the filled
    settings; ``video`` applies its ``video`` entries (``detector_settings``); ``cache_dir``
    keeps MTCNN's converted weights."""
    settings = detector_settings(detector_cfg, video)  # an unknown name is refused here (the schema's choices)
    name = settings["name"]
    if name not in DETECTORS:
        raise ConfigError(f"detector.name: unknown detector {name!r} ({'|'.join(DETECTORS)})")
    module, class_name = DETECTORS[name].split(":")
    detector_class = getattr(importlib.import_module(module), class_name)  # deferred: only the chosen detector's module
    return detector_class.from_settings(settings, cache_dir)
