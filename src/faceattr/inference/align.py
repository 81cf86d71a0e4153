"""Alignment: map a detected face onto the chip template, so it looks like a training chip.

UTKFace's chips are aligned crops: the eyes, nose and mouth corners sit at nearly the same
place in every chip. ``ChipTemplate`` holds those places (the median of the detector's five
landmarks over training chips, as fractions of the chip side; ``estimate_template`` measures
it). ``align_face`` finds the similarity transform (rotation, uniform scale, shift) that carries
a detected face's landmarks onto the template and warps the photo with it, so the model sees the
same framing it was trained on. Where the landmarks are missing or implausible (a profile face,
a false detection), the caller falls back to the box with the detector's calibrated margin
(``crop.crop_face``) and reports the face as not aligned. The template and the similarity fit
live in ``template`` (a detector may use them without importing the alignment).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from faceattr.inference.crop import crop_face
from faceattr.inference.detection import Detection
from faceattr.inference.detectors import make_detector
from faceattr.inference.images import read_image
from faceattr.inference.template import MAX_RESIDUAL as MAX_RESIDUAL  # re-exported
from faceattr.inference.template import UTKFACE_TEMPLATE as UTKFACE_TEMPLATE  # re-exported
from faceattr.inference.template import ChipTemplate, residual, similarity
from faceattr.landmarks import LANDMARK_NAMES


def fit(landmarks: np.ndarray | None, template: ChipTemplate, size: int) -> tuple[np.ndarray | None, float]:
    """The transform carrying ``landmarks`` onto the template in a ``size`` chip, and its residual.

    Returns ``(None, inf)`` where the landmarks can't give a sensible alignment: missing, not
    finite, the eyes swapped or on top of each other, or a fit worse than ``template.max_residual``
    (a profile face, or landmarks of something that is not a face).
    """
    if landmarks is None:
        return None, math.inf
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (len(LANDMARK_NAMES), 2) or not np.isfinite(pts).all():
        return None, math.inf
    if pts[1, 0] - pts[0, 0] <= 1.0:  # image-left eye must be left of the other, and apart
        return None, math.inf
    target = template.at(size)
    m = similarity(pts, target)
    err = residual(pts, m, target)
    return (m, err) if err <= template.max_residual else (None, err)


def warp(image: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """``image`` warped by the 2x3 matrix ``m`` into a ``size`` x ``size`` picture.

    Parts outside the image replicate its border, like ``crop.crop_square``. Only the region the
    output covers is touched, and where ``m`` shrinks by more than 2x that region is first
    shrunk with area interpolation (as the training chips were), so the warp doesn't alias.
    """
    h, w = image.shape[:2]
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64) @ inv.T
    x0 = int(np.clip(math.floor(corners[:, 0].min()) - 1, 0, w - 1))
    y0 = int(np.clip(math.floor(corners[:, 1].min()) - 1, 0, h - 1))
    x1 = int(np.clip(math.ceil(corners[:, 0].max()) + 2, x0 + 1, w))
    y1 = int(np.clip(math.ceil(corners[:, 1].max()) + 2, y0 + 1, h))
    region = image[y0:y1, x0:x1]
    local = m.copy()
    local[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)  # region pixel + offset = image pixel
    scale = math.sqrt(abs(float(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        rw, rh = max(1, round(region.shape[1] * scale * 2)), max(1, round(region.shape[0] * scale * 2))
        fx, fy = rw / region.shape[1], rh / region.shape[0]
        region = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
        local[:, 0] /= fx
        local[:, 1] /= fy
    return cv2.warpAffine(region, local, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def align_face(image_rgb: np.ndarray, detection: Detection, template: ChipTemplate, out_size: int,
               margin: float = 0.0, shift_y: float = 0.0) -> tuple[np.ndarray, bool]:
    """The model's view of one face, (out_size, out_size, 3) uint8 RGB, and whether it was aligned.

    With plausible landmarks (``fit``) the face is mapped onto the template; otherwise the
    detection box grown by ``margin`` (and moved down by ``shift_y``) is cropped, as the detector
    was calibrated for (``crop.crop_face``), and ``False`` is returned with it.
    """
    m, _ = fit(detection.landmarks, template, int(out_size))
    if m is None:
        return crop_face(image_rgb, detection, margin, int(out_size), shift_y), False
    return np.ascontiguousarray(warp(image_rgb, m, int(out_size)), dtype=np.uint8), True


@dataclass
class TemplateEstimate:
    """What ``estimate_template`` measured over a set of chips.

    ``template``: the median landmark positions; ``landmarks``: (N, 5, 2) fractions of each
    chip's side for the N chips where one face was found; ``residuals`` (N,): each chip's fit
    residual to the template; ``rotation_deg``, ``scale``, ``shift`` (N,), (N,), (N, 2): the
    similarity that maps each chip onto the template (degrees, factor, fractions of the side):
    the spread that detection plus alignment shows on training faces. ``missed``: chips without
    exactly one face with landmarks.
    """

    template: ChipTemplate
    landmarks: np.ndarray
    residuals: np.ndarray
    rotation_deg: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    missed: int


def estimate_template(chips_bgr: Iterable[np.ndarray], detector) -> TemplateEstimate:
    """Run ``detector`` (one that gives landmarks) over chips and take the median landmarks.

    ``chips_bgr``: (H, W, 3) uint8 BGR training chips (any square size; positions are kept as
    fractions of the side). The largest detection of a chip counts; a chip without one is missed.
    """
    found: list[np.ndarray] = []
    missed = 0
    for chip in chips_bgr:
        faces = [d for d in detector.detect(chip) if d.landmarks is not None]
        if not faces:
            missed += 1
            continue
        best = max(faces, key=lambda d: d.w * d.h)
        found.append(np.asarray(best.landmarks, dtype=np.float64) / float(chip.shape[1]))
    if not found:
        raise ValueError("estimate_template: the detector found no face with landmarks in any chip")
    landmarks = np.stack(found)
    template = ChipTemplate(tuple((float(x), float(y)) for x, y in np.median(landmarks, axis=0).round(4)))
    target = template.at(1)
    mats = [similarity(p, target) for p in landmarks]
    return TemplateEstimate(
        template=template, landmarks=landmarks,
        residuals=np.array([residual(p, m, target) for p, m in zip(landmarks, mats, strict=True)]),
        rotation_deg=np.array([math.degrees(math.atan2(m[1, 0], m[0, 0])) for m in mats]),
        scale=np.array([math.hypot(m[0, 0], m[1, 0]) for m in mats]),
        shift=np.array([m[:, :2] @ np.array([0.5, 0.5]) + m[:, 2] - 0.5 for m in mats]),
        missed=missed)


def main(argv: list[str] | None = None) -> None:
    """Measure the chip template: ``python -m faceattr.inference.align CHIP_DIR SPLIT_CSV [N]``.

    Runs MTCNN over ``N`` (default 2,000) training-split chips of ``SPLIT_CSV`` (a model's
    ``split.csv``), chosen at random with seed 0, and prints the template, the residuals'
    percentiles and the spread of the chip-to-template similarity (for augmentation).
    """
    import pandas as pd  # deferred: pandas, only for this measuring script; `run` imports this module

    args = list(sys.argv[1:] if argv is None else argv)
    folder, split_csv = Path(args[0]), Path(args[1])
    n = int(args[2]) if len(args) > 2 else 2000
    names = pd.read_csv(split_csv).query("split == 'train'")["image"].sample(n, random_state=0)
    detector = make_detector({"name": "mtcnn", "min_confidence": 0.9, "min_size": 40})
    est = estimate_template((read_image(folder / name) for name in names), detector)
    print(f"chips: {n}, missed: {est.missed}")
    print("template:", [list(p) for p in est.template.points])
    print("residual percentiles 50/95/99/99.5:", np.percentile(est.residuals, [50, 95, 99, 99.5]).round(3).tolist())
    print("rotation deg sd / 1-99 %:", round(float(est.rotation_deg.std()), 2),
          np.percentile(est.rotation_deg, [1, 99]).round(2).tolist())
    print("scale sd / 1-99 %:", round(float(est.scale.std()), 3), np.percentile(est.scale, [1, 99]).round(3).tolist())
    print("shift sd (x, y):", est.shift.std(axis=0).round(4).tolist(),
          "1-99 % x:", np.percentile(est.shift[:, 0], [1, 99]).round(3).tolist(),
          "y:", np.percentile(est.shift[:, 1], [1, 99]).round(3).tolist())


if __name__ == "__main__":
    main()
