"""Measures where BlazeFace's keypoints sit in the chip template's frame (``blazeface.KEYPOINT_FRAME``)
and the box crop's calibration, on training chips, beside MTCNN:

    python -m faceattr.inference.keypoint_frame <UTKFace folder> saved_model/facenet/split.csv [N]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from faceattr.inference.blazeface import BlazeFaceDetector
from faceattr.inference.detectors import make_detector
from faceattr.inference.images import read_image
from faceattr.inference.template import UTKFACE_TEMPLATE, residual, similarity


def main(argv: list[str] | None = None) -> None:
    """Measure ``KEYPOINT_FRAME``: ``python -m faceattr.inference.keypoint_frame CHIP_DIR SPLIT_CSV [N]``.

    Over ``N`` (default 2,000) training-split chips of ``SPLIT_CSV`` (a model's ``split.csv``),
    chosen at random with seed 0 as ``align.main`` chooses them, runs MTCNN (as ``align.main``)
    and BlazeFace; where both find a face, BlazeFace's eyes, nose tip and mouth centre are carried
    by the similarity that fits MTCNN's five landmarks onto ``UTKFACE_TEMPLATE``. Prints their
    median (the frame), the four-point fit residuals' percentiles, how far the alignment from
    BlazeFace's landmarks lands from MTCNN's (chip-side fractions) and the box crop's calibration
    (``margin``, ``shift_y`` as ``conf/detector/*.yaml`` take them).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    folder, split_csv = Path(args[0]), Path(args[1])
    n = int(args[2]) if len(args) > 2 else 2000
    names = pd.read_csv(split_csv).query("split == 'train'")["image"].sample(n, random_state=0)
    mtcnn = make_detector({"name": "mtcnn", "min_confidence": 0.9, "min_size": 40})
    blazeface = BlazeFaceDetector()
    template = np.asarray(UTKFACE_TEMPLATE, dtype=np.float64)
    carried, margins, shifts = [], [], []
    for name in names:
        chip = read_image(folder / name)
        side = float(chip.shape[1])
        faces = [d for d in mtcnn.detect(chip) if d.landmarks is not None]
        boxes, keypoints, _ = blazeface.raw(chip)
        if not faces or not len(boxes):
            continue
        best = max(faces, key=lambda d: d.w * d.h)
        k = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        m = similarity(np.asarray(best.landmarks, np.float64) / side, template)
        carried.append(keypoints[k, :4].astype(np.float64) / side @ m[:, :2].T + m[:, 2])
        x0, y0, x1, y1 = boxes[k] / side
        margins.append((1.0 / max(x1 - x0, y1 - y0) - 1.0) / 2.0)
        shifts.append((0.5 - (y0 + y1) / 2.0) / (y1 - y0))
    if not carried:
        raise SystemExit("no chip where both detectors found a face")
    points = np.stack(carried)
    frame = np.median(points, axis=0)
    fits = [similarity(p, frame) for p in points]
    residuals = np.array([residual(p, f, frame) for p, f in zip(points, fits, strict=True)])
    # The alignment BlazeFace's landmarks give, against MTCNN's (the identity in this frame):
    # its rotation (degrees), scale and where it moves the chip's centre (chip-side fractions).
    rotation = np.degrees([math.atan2(f[1, 0], f[0, 0]) for f in fits])
    scale = np.array([math.hypot(f[0, 0], f[1, 0]) for f in fits])
    centre = np.array([np.linalg.norm(f[:, :2] @ np.array([0.5, 0.5]) + f[:, 2] - 0.5) for f in fits])
    print(f"chips: {n}, both found: {len(points)}")
    print("frame:", frame.round(4).tolist())
    print("residual percentiles 50/95/99/99.5:", np.percentile(residuals, [50, 95, 99, 99.5]).round(3).tolist())
    print("against MTCNN's alignment, percentiles 5/50/95: rotation (deg)",
          np.percentile(rotation, [5, 50, 95]).round(2).tolist(), "scale",
          np.percentile(scale, [5, 50, 95]).round(3).tolist(), "centre shift (chip sides)",
          np.percentile(centre, [5, 50, 95]).round(4).tolist())
    print(f"box crops: margin {np.median(margins):.3f}, shift_y {np.median(shifts):.3f}")


if __name__ == "__main__":
    main()
