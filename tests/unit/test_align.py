"""Alignment onto the chip template: synthetic faces with known geometry, and the fallback."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from faceattr.inference.align import ChipTemplate, align_face, estimate_template, fit, similarity, warp
from faceattr.inference.crop import crop_face
from faceattr.inference.detectors import Detection

CHIP = 200
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255))


def synthetic_chip(template: ChipTemplate, size: int = CHIP) -> np.ndarray:
    """A grey 'chip' with a coloured dot on each template landmark and a gradient background,
    so any misplacement changes many pixels."""
    yy, xx = np.mgrid[0:size, 0:size]
    chip = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    for (x, y), colour in zip(template.at(size), COLOURS, strict=True):
        cv2.circle(chip, (round(x), round(y)), size // 25, colour, -1, lineType=cv2.LINE_AA)
    return chip


def rotate_scale(points: np.ndarray, angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """2x3 similarity: rotate by ``angle_deg`` and scale about the origin, then shift."""
    a = math.radians(angle_deg)
    m = np.array([[scale * math.cos(a), -scale * math.sin(a), shift[0]],
                  [scale * math.sin(a), scale * math.cos(a), shift[1]]])
    return m if points is None else points @ m[:, :2].T + m[:, 2]


def photo_of(chip: np.ndarray, m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The chip placed into a larger 'photo' by the similarity ``m`` (chip px -> photo px)."""
    return cv2.warpAffine(chip, m, (shape[1], shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    m = rotate_scale(None, 23.0, 1.7, (40.0, -12.0))
    dst = src @ m[:, :2].T + m[:, 2]
    assert np.allclose(similarity(src, dst), m, atol=1e-9)


@pytest.mark.parametrize("angle, scale, out_size", [(25.0, 2.3, 160), (-15.0, 0.8, 64), (0.0, 4.0, 160)])
def test_a_rotated_and_scaled_face_maps_back_onto_the_template(angle, scale, out_size):
    template = ChipTemplate()
    chip = synthetic_chip(template)
    # The chip turned, enlarged and moved into a big photo: where would a detector see its landmarks?
    m = rotate_scale(None, angle, scale, (300.0, 150.0))
    photo = photo_of(chip, m, (1000, 1100))
    landmarks = template.at(CHIP) @ m[:, :2].T + m[:, 2]
    box = cv2.boundingRect(landmarks.astype(np.float32))
    detection = Detection(*box, score=0.99, landmarks=landmarks.astype(np.float32))
    face, aligned = align_face(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB), detection, template, out_size)
    assert aligned and face.shape == (out_size, out_size, 3) and face.dtype == np.uint8
    expected = cv2.resize(cv2.cvtColor(chip, cv2.COLOR_BGR2RGB), (out_size, out_size), interpolation=cv2.INTER_AREA)
    # The same picture as the untouched chip, up to resampling: every dot back on its template place.
    assert np.abs(face.astype(int) - expected.astype(int)).mean() < 6.0
    for (x, y), colour in zip(template.at(out_size), COLOURS, strict=True):
        got = face[round(y), round(x)].astype(int)
        assert np.abs(got - np.array(colour[::-1])).max() < 60, (x, y, got, colour)


def test_implausible_landmarks_fall_back_to_the_box_with_margin():
    template = ChipTemplate()
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    frontal = template.at(100) + 100.0
    profile = frontal.copy()
    profile[2, 0] += 45.0  # the nose far beside the eyes and mouth: a turned head
    detection = Detection(100, 100, 100, 100, landmarks=profile.astype(np.float32))
    m, err = fit(detection.landmarks, template, 64)
    assert m is None and err > template.max_residual
    face, aligned = align_face(photo, detection, template, 64, margin=0.2, shift_y=0.05)
    assert not aligned
    assert np.array_equal(face, crop_face(photo, detection, 0.2, 64, shift_y=0.05))
    # No landmarks at all (Haar) and swapped eyes fall back too; a frontal face is aligned.
    assert not align_face(photo, Detection(100, 100, 100, 100), template, 64)[1]
    swapped = frontal[[1, 0, 2, 4, 3]]
    assert fit(swapped, template, 64)[0] is None
    assert align_face(photo, Detection(100, 100, 100, 100, landmarks=frontal), template, 64)[1]


def test_warp_of_a_far_away_face_has_no_aliasing():
    # A fine checkerboard shrunk 8x: area interpolation averages it to grey, plain bilinear would not.
    board = (np.indices((800, 800)).sum(axis=0) % 2 * 255).astype(np.uint8)
    board = np.repeat(board[..., None], 3, axis=2)
    out = warp(board, np.array([[0.125, 0.0, 0.0], [0.0, 0.125, 0.0]]), 100)
    assert abs(float(out.mean()) - 127.5) < 3 and float(out.std()) < 10


def test_estimate_template_takes_the_median_and_measures_the_spread():
    template = ChipTemplate()

    class Jittered:
        """A 'detector' that reports the template's landmarks moved by a known similarity."""

        def __init__(self):
            self.k = 0

        def detect(self, chip):
            self.k += 1
            angle = (-4.0, 0.0, 4.0)[self.k % 3]
            pts = template.at(chip.shape[1]) - chip.shape[1] / 2
            pts = rotate_scale(pts, angle, 1.0, (chip.shape[1] / 2, chip.shape[1] / 2))
            return [Detection(0, 0, chip.shape[1], chip.shape[0], landmarks=pts)] if self.k % 4 else []

    chips = [np.zeros((CHIP, CHIP, 3), np.uint8)] * 12
    est = estimate_template(chips, Jittered())
    assert est.missed == 3 and len(est.landmarks) == 9
    assert np.allclose(np.asarray(est.template.points), np.asarray(template.points), atol=2e-3)
    assert sorted(set(np.round(np.abs(est.rotation_deg)).tolist())) == [0.0, 4.0]
    assert np.allclose(est.scale, 1.0, atol=1e-3) and np.all(est.residuals < 0.01)
