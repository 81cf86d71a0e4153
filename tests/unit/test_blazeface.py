"""BlazeFace short range (``inference.blazeface``): the shipped network through LiteRT, with this
project's anchors, decoding and weighted NMS, against mediapipe 0.10.21's own outputs on the
example photo (``tests/fixtures/blazeface_reference.json``, written once by
``tests/fixtures/blazeface_reference.py`` in a venv holding mediapipe), and its landmarks
against MTCNN's alignment."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceattr.config import compose_config
from faceattr.inference.align import ChipTemplate, align_face, fit
from faceattr.inference.blazeface import (
    ANCHORS,
    KEYPOINT_FRAME,
    NUM_ANCHORS,
    WEIGHTS,
    BlazeFaceDetector,
    decode,
    keypoints_to_landmarks,
    weighted_nms,
)
from faceattr.inference.detectors import make_detector

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"


def _reference_module():
    spec = importlib.util.spec_from_file_location("blazeface_reference", FIXTURES / "blazeface_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def detector() -> BlazeFaceDetector:
    return BlazeFaceDetector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    image = cv2.imread(str(ASTRONAUT))
    assert image is not None
    return image


def test_weights_are_the_recorded_file_with_their_licence():
    readme = (WEIGHTS.parent / "README.md").read_text()
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() in readme
    assert "Apache License" in (WEIGHTS.parent / "LICENSE-mediapipe").read_text()


def test_anchors_follow_the_ssd_layout():
    assert ANCHORS.shape == (NUM_ANCHORS, 2) == (896, 2)
    # Stride 8: a 16x16 grid, two anchors per cell; strides 16 (three layers): 8x8, six per cell.
    assert np.allclose(ANCHORS[0], ANCHORS[1]) and np.allclose(ANCHORS[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(ANCHORS[2], [1.5 / 16, 0.5 / 16]) and np.allclose(ANCHORS[32], [0.5 / 16, 1.5 / 16])
    assert np.allclose(ANCHORS[512:518], [0.5 / 8, 0.5 / 8]) and np.allclose(ANCHORS[518], [1.5 / 8, 0.5 / 8])
    assert np.allclose(ANCHORS[-1], [7.5 / 8, 7.5 / 8])


def test_decode_and_weighted_nms_merge_overlapping_candidates():
    regressors = np.zeros((NUM_ANCHORS, 16), np.float32)
    logits = np.full(NUM_ANCHORS, -10.0, np.float32)
    # Two anchors of one cell (same centre) with 20 and 24 px boxes, and a far one.
    for index, size, logit in ((0, 20.0, 2.0), (1, 24.0, 0.0), (895, 16.0, 1.0)):
        regressors[index, 2:4] = size
        regressors[index, 4:] = np.tile([3.0, -2.0], 6)  # every keypoint 3 px right, 2 px up
        logits[index] = logit
    boxes, points, scores = decode(regressors, logits, min_score=0.5)
    assert len(scores) == 3 and scores.min() == pytest.approx(0.5)  # sigmoid(0) == 0.5 is kept
    boxes, points, scores = weighted_nms(boxes, points, scores)
    assert len(scores) == 2 and scores[0] == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-6)
    w1, w2 = 1 / (1 + math.exp(-2.0)), 0.5
    side = (w1 * 20 + w2 * 24) / (w1 + w2) / 128
    centre = 0.5 / 16
    assert np.allclose(boxes[0], [centre - side / 2] * 2 + [centre + side / 2] * 2, atol=1e-6)
    assert np.allclose(points[0], [centre + 3 / 128, centre - 2 / 128], atol=1e-6)
    assert np.allclose(boxes[1], [7.5 / 8 - 8 / 128, 7.5 / 8 - 8 / 128, 7.5 / 8 + 8 / 128, 7.5 / 8 + 8 / 128])


def test_detections_match_mediapipe(detector, astronaut):
    reference = json.loads((FIXTURES / "blazeface_reference.json").read_text())
    images = _reference_module().reference_images(astronaut)
    assert set(images) == set(reference["images"])
    faces_seen = 0
    for name, image in images.items():
        expected = reference["images"][name]
        assert list(image.shape) == expected["shape"], name
        boxes, keypoints, scores = detector.raw(image)
        assert len(scores) == len(expected["faces"]), name
        h, w = image.shape[:2]
        for box, points, score, face in zip(boxes, keypoints, scores, expected["faces"], strict=True):
            x, y, bw, bh = np.asarray(face["box"]) * [w, h, w, h]
            assert np.allclose(box, [x, y, x + bw, y + bh], atol=0.05), name
            assert np.allclose(points, np.asarray(face["keypoints"]) * [w, h], atol=0.05), name
            assert score == pytest.approx(face["score"], abs=1e-4), name
            faces_seen += 1
    assert faces_seen == 10  # the four-face frame included; the halved faces are too small for it


def test_keypoints_become_landmarks_that_align_like_mtcnn(detector, astronaut):
    """On the example photo the alignment from BlazeFace's keypoints lands where MTCNN's five
    points put the face, within the spread measured between the two on 1,942 training chips
    (95 %: within 7.3 degrees, scale 0.92-1.12, the chip's centre within 6.6 % of its side;
    ``blazeface.KEYPOINT_FRAME``)."""
    [blaze] = detector.detect(astronaut)
    [mtcnn] = make_detector({"name": "mtcnn", "min_confidence": 0.9}).detect(astronaut)
    assert blaze.landmarks is not None and blaze.landmarks.shape == (5, 2)
    size = 160
    m_blaze, _ = fit(blaze.landmarks, ChipTemplate(), size)
    m_mtcnn, _ = fit(mtcnn.landmarks, ChipTemplate(), size)
    assert m_blaze is not None and m_mtcnn is not None
    rotation = [math.degrees(math.atan2(m[1, 0], m[0, 0])) for m in (m_blaze, m_mtcnn)]
    scale = [math.hypot(m[0, 0], m[1, 0]) for m in (m_blaze, m_mtcnn)]
    assert abs(rotation[0] - rotation[1]) < 7.3
    assert 0.92 < scale[0] / scale[1] < 1.12
    # The photo point MTCNN's alignment puts at the chip's centre, carried by BlazeFace's.
    inverse = cv2.invertAffineTransform(m_mtcnn)
    point = inverse[:, :2] @ np.array([size / 2, size / 2]) + inverse[:, 2]
    assert np.linalg.norm(m_blaze[:, :2] @ point + m_blaze[:, 2] - size / 2) < 0.066 * size


def test_implausible_keypoints_give_no_landmarks():
    frame = np.asarray(KEYPOINT_FRAME) * 100.0
    points = np.vstack([frame, [[20, 30], [80, 30]]])
    assert keypoints_to_landmarks(points) is not None
    turned = points.copy()
    turned[3] = [20.0, 60.0]  # mouth centre under the left eye: a face seen from the side
    assert keypoints_to_landmarks(turned) is None
    swapped = points.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert keypoints_to_landmarks(swapped) is None
    assert keypoints_to_landmarks(np.full((6, 2), np.nan)) is None


def test_detector_config_gives_faces_that_align(astronaut):
    cfg = compose_config(["command=run", "detector=blazeface"])
    detector = make_detector(cfg.detector)
    assert isinstance(detector, BlazeFaceDetector) and detector.min_confidence == pytest.approx(0.5)
    assert bool(cfg.detector.align)
    [face] = detector.detect(astronaut)
    chip, aligned = align_face(cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB), face, ChipTemplate(), 64,
                               float(cfg.detector.margin), float(cfg.detector.shift_y))
    assert aligned and chip.shape == (64, 64, 3)
    assert detector.detect(np.zeros((48, 64, 3), np.uint8)) == []


def test_bad_images_are_refused_in_one_line(detector):
    from faceattr.errors import InputError

    with pytest.raises(InputError, match="expected an \\(H, W, 3\\) BGR image"):
        detector.detect(np.zeros((10, 10), np.uint8))
