"""The face pipeline every front end shares: image -> detections -> the model's view of each
face (aligned onto the chip template, or the box with margin) -> predictions.

``run --img``, ``run --video`` and ``evaluate --labels`` all go through ``FacePipeline``, so a
photo is framed the same way wherever it is scored. Plain arguments, no Hydra, with
``FacePipeline.from_config(cfg)`` for the commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from faceattr.inference.align import ChipTemplate, align_face
from faceattr.inference.crop import crop_face
from faceattr.inference.detectors import Detection, Detector, detector_settings, make_detector
from faceattr.inference.predictor import FacePrediction, Predictor


@dataclass
class FaceCrop:
    """One detected face as the model sees it.

    ``image``: (S, S, 3) uint8 RGB, S = the model's input size. ``aligned``: True when the face
    was mapped onto the chip template by its landmarks, False when it is the detection box with
    the detector's margin (no landmarks, implausible ones, or alignment switched off).
    """

    detection: Detection
    image: np.ndarray = field(repr=False)
    aligned: bool


def reading_order(detections: Sequence[Detection]) -> list[Detection]:
    """Faces left to right, top to bottom: sorted by their vertical centre into rows (a face
    whose centre lies within half its row's first face height of that face's centre joins the
    row), each row left to right by its box's left edge (pixels)."""
    rows: list[tuple[float, float, list[Detection]]] = []
    for d in sorted(detections, key=lambda d: d.y + d.h / 2):
        centre = d.y + d.h / 2
        if rows and abs(centre - rows[-1][0]) <= rows[-1][1] / 2:
            rows[-1][2].append(d)
        else:
            rows.append((centre, float(d.h), [d]))
    return [d for _, _, row in rows for d in sorted(row, key=lambda d: d.x)]


@dataclass
class FacePipeline:
    """Image -> detections -> face crops -> predictions.

    ``margin``: fraction of the face box added on each side of a box crop; ``shift_y``: the box
    crop's centre moves down by this fraction of the box height. Both belong to the detector and
    are calibrated so its box crops frame a face like the training chips (conf/detector/*.yaml).
    ``align``: map faces with plausible landmarks onto ``template`` (the model's chip template).
    """

    detector: Detector
    predictor: Predictor
    margin: float = 0.1
    align: bool = True
    shift_y: float = 0.0
    template: ChipTemplate = field(default_factory=ChipTemplate)

    def crops(self, image_bgr: np.ndarray) -> list[FaceCrop]:
        """Every face of an (H, W, 3) BGR image, as the model will see it, in reading order
        (:func:`reading_order`: the numbering of ``run``'s annotated images and the web page)."""
        return self.crop(image_bgr, reading_order(self.detector.detect(image_bgr)))

    def crop(self, image_bgr: np.ndarray, detections: Sequence[Detection]) -> list[FaceCrop]:
        """The model's view of each detection in ``image_bgr``."""
        if not detections:
            return []
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        size = self.predictor.input_size
        if not self.align:
            return [FaceCrop(d, crop_face(rgb, d, self.margin, size, self.shift_y), False) for d in detections]
        out = []
        for d in detections:
            face, aligned = align_face(rgb, d, self.template, size, self.margin, self.shift_y)
            out.append(FaceCrop(d, face, aligned))
        return out

    def predict(self, faces: Sequence[FaceCrop], tta_flip: bool | None = None) -> list[FacePrediction]:
        """Predictions for face crops, in order (one model call per ``predictor.batch_size``);
        ``tta_flip``: also their mirror images (None: the predictor's setting, ``run.tta_flip``)."""
        return self.predictor.predict([f.image for f in faces], tta_flip)

    @classmethod
    def from_config(cls, cfg: Any, predictor: Predictor | None = None, video: bool = False) -> FacePipeline:
        """Detector from ``cfg.detector`` (with its ``video`` settings when ``video``), model from
        ``model_path`` (see ``Predictor.from_config``); the template is the model's own."""
        predictor = predictor or Predictor.from_config(cfg)
        settings = detector_settings(cfg.detector, video=video)
        detector = make_detector(settings, cache_dir=cfg.paths.cache if "paths" in cfg else None)
        return cls(detector, predictor, margin=float(settings["margin"]), align=bool(settings["align"]),
                   shift_y=float(settings["shift_y"]),
                   template=predictor.chip_template)
