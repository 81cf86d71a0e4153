"""Drawing results onto images: a box and a label per face, FPS text for video.

Font scale and line thickness follow the image size so labels are readable on a 320x240
webcam frame and on a 24-megapixel photo alike; labels are always kept inside the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from faceattr.inference.predictor import FacePrediction

FONT = cv2.FONT_HERSHEY_SIMPLEX
BOX_COLOUR = (60, 200, 60)      # BGR green
MISSED_COLOUR = (0, 190, 255)   # BGR amber: a track kept without a detection this frame
TEXT_COLOUR = (0, 0, 0)


def format_label(pred: FacePrediction | None) -> str:
    """``"34y female 97% | white 88%"`` (age in years, confidences in percent)."""
    if pred is None:
        return "..."
    return (f"{pred.age:.0f}y {pred.gender} {100 * pred.gender_confidence:.0f}% | "
            f"{pred.race} {100 * pred.race_confidence:.0f}%")


def style_for(image: np.ndarray) -> tuple[float, int]:
    """(font scale, thickness in px) for an image: scale 0.5 at ~500 px shorter side."""
    short = min(image.shape[:2])
    scale = float(np.clip(short / 1000.0, 0.35, 3.0))
    return scale, max(1, round(scale * 2))


def put_label(image: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int] = BOX_COLOUR,
              scale: float | None = None, thickness: int | None = None) -> None:
    """Draw ``text`` on a filled background with its bottom-left corner near (x, y), in place,
    moved (and shrunk if it is wider than the image) so it stays entirely inside the image."""
    H, W = image.shape[:2]
    auto_scale, auto_thick = style_for(image)
    scale = auto_scale if scale is None else scale
    thickness = auto_thick if thickness is None else thickness
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    if tw + 4 > W:  # wider than the image: shrink to fit
        scale *= (W - 4) / (tw + 4)
        thickness = max(1, min(thickness, round(scale * 2)))
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(2, thickness)
    x = int(np.clip(x, 0, max(0, W - tw - 2 * pad)))
    y = int(np.clip(y, th + 2 * pad, max(th + 2 * pad, H - base - pad)))
    cv2.rectangle(image, (x, y - th - 2 * pad), (x + tw + 2 * pad, y + base + pad), colour, cv2.FILLED)
    cv2.putText(image, text, (x + pad, y - pad), FONT, scale, TEXT_COLOUR, thickness, cv2.LINE_AA)


def draw_face(image: np.ndarray, box: Sequence[int], label: str, colour: tuple[int, int, int] = BOX_COLOUR) -> None:
    """Box ``(x, y, w, h)`` and its label (above the box, or inside its top when there's no
    room above), in place on a BGR image."""
    x, y, w, h = (int(v) for v in box)
    scale, thickness = style_for(image)
    cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
    (_, th), _ = cv2.getTextSize(label, FONT, scale, thickness)
    above = y - thickness
    put_label(image, label, x, above if above - th - 2 * thickness > 0 else y + th + 3 * thickness,
              colour, scale, thickness)


def annotate(image_bgr: np.ndarray, faces: Sequence[tuple[Sequence[int], FacePrediction | None]]) -> np.ndarray:
    """A copy of ``image_bgr`` with every ``(box, prediction)`` drawn."""
    out = image_bgr.copy()
    for box, pred in faces:
        draw_face(out, box, format_label(pred))
    return out


def draw_fps(image: np.ndarray, text: str) -> None:
    """FPS (or any status) text in the top-left corner, in place."""
    put_label(image, text, 0, 0, colour=(255, 255, 255))
