"""BlazeFace short range: a fast face detector with keypoints, run through LiteRT (no TensorFlow).

The network is mediapipe's ``face_detection_short_range.tflite`` (Apache 2.0, carried in
``inference/weights/`` with its licence and provenance). Everything around it is written here,
after mediapipe 0.10.21's ``face_detection_short_range`` graph, and checked against that graph's
own outputs (``tests/unit/test_blazeface.py``):

- **Input**: the image letterboxed into 128 x 128 (scaled to fit, centred, zero border; bilinear,
  corners mapped onto corners), RGB scaled to [-1, 1].
- **Anchors** (``ssd_anchors``): SSD anchors of four layers with strides 8, 16, 16, 16, two anchors
  per cell and layer, of fixed unit size: 16 x 16 x 2 + 8 x 8 x 6 = 896 centres.
- **Decoding** (``decode``): each anchor's 16 regressors are the box centre offset, width and
  height and six keypoint offsets, in input pixels (scale 128); the score is the logit's sigmoid.
- **Weighted NMS** (``weighted_nms``, IoU 0.3): each kept face is the score-weighted mean of the
  boxes and keypoints it suppresses.

The six keypoints are, in image terms, the eye further left, the other eye, the nose tip, the
mouth centre and the two ear tragions. Alignment (``inference.align``) works on MTCNN's five
points (eyes, nose, mouth corners). ``KEYPOINT_FRAME`` says where BlazeFace's first four keypoints
sit in the chip template's frame, measured on training chips where both detectors found the face
(``keypoint_frame``); a face's four keypoints are fitted onto it by a similarity, and the
template's five points carried back into the photo are the landmarks it hands on. So a BlazeFace face is aligned
by the same transform MTCNN's five points would give on average, and a fit worse than
``MAX_KEYPOINT_RESIDUAL`` (a turned head, something that is not a face) gives no landmarks: the
face is then cropped by its box with the detector's margin.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceattr.errors import InputError, ModelError
from faceattr.inference.detection import Detection
from faceattr.inference.template import UTKFACE_TEMPLATE, residual, similarity

log = logging.getLogger(__name__)

#: The network's file, beside its licence and provenance (``weights/README.md``).
WEIGHTS = Path(__file__).resolve().parent / "weights" / "face_detection_short_range.tflite"
INPUT_SIZE = 128
STRIDES = (8, 16, 16, 16)
ANCHORS_PER_LAYER = 2
NUM_ANCHORS = 896
NUM_KEYPOINTS = 6
#: Regressor units: input pixels (x, y, w, h and keypoints alike).
COORD_SCALE = 128.0
SCORE_CLIP = 100.0
NMS_IOU = 0.3
KEYPOINT_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose_tip", "mouth_centre", "left_ear", "right_ear")

#: Where BlazeFace puts its eyes, nose tip and mouth centre (``KEYPOINT_NAMES[:4]``) in a
#: training chip whose MTCNN landmarks sit on ``UTKFACE_TEMPLATE``, as fractions of the chip side:
#: the median over the 1,942 of 2,000 random training-split chips (those ``align.main`` measures the
#: template on) where both detectors found a face, measured with
#: ``python -m faceattr.inference.keypoint_frame <UTKFace folder> saved_model/facenet/split.csv``.
#: Aligned through it, a chip lands where MTCNN's points put it to within -0.07 degrees, a scale of
#: 0.992 and 2.4 % of the side (medians; 5-95 %: +-7 degrees, 0.92-1.12, 0.6-6.6 %).
KEYPOINT_FRAME: tuple[tuple[float, float], ...] = (
    (0.2833, 0.2995), (0.6924, 0.2878), (0.4848, 0.5192), (0.4925, 0.7234),
)
#: Largest RMS distance (in eye distances) between a face's four keypoints, carried by their fitted
#: similarity, and ``KEYPOINT_FRAME`` for the face to get landmarks. Over those chips the median is
#: 0.028 and the 99.5th percentile 0.093 (``keypoint_frame`` prints them); real photos spread wider: on the
#: 270 of fairface-dev (``benchmarks/README.md``) the median is 0.082, and 0.2 gives landmarks to
#: 85.9 % of the faces, as MTCNN's five points pass ``align.MAX_RESIDUAL`` (0.2) on 84.8 % of them.
MAX_KEYPOINT_RESIDUAL = 0.2


def ssd_anchors(input_size: int = INPUT_SIZE, strides: tuple[int, ...] = STRIDES,
                anchors_per_layer: int = ANCHORS_PER_LAYER) -> np.ndarray:
    """(896, 2) float32 anchor centres (x, y) as fractions of the input side, in the network's order.

    As mediapipe's ``SsdAnchorsCalculator`` with fixed-size anchors: consecutive layers of equal
    stride share one grid, row by row, cell by cell, each cell holding that group's anchors
    together (``anchors_per_layer`` per layer); a cell's centre is ``(col + 0.5) / cols``.
    """
    centres: list[np.ndarray] = []
    layer = 0
    while layer < len(strides):
        stride, same = strides[layer], 0
        while layer < len(strides) and strides[layer] == stride:
            same += 1
            layer += 1
        cells = math.ceil(input_size / stride)
        grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        cell_centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cell_centres, same * anchors_per_layer, axis=0))
    return np.concatenate(centres).astype(np.float32)


ANCHORS = ssd_anchors()


def decode(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray = ANCHORS,
           min_score: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The network's raw outputs -> candidate faces with a score of at least ``min_score``.

    ``regressors``: (896, 16) float32 (x centre, y centre, w, h, then six keypoints (x, y), all
    in input pixels relative to the anchor); ``logits``: (896,) scores before the sigmoid.
    Returns ``boxes`` (K, 4) as (xmin, ymin, xmax, ymax), ``keypoints`` (K, 6, 2) and ``scores``
    (K,), coordinates as fractions of the (letterboxed) input side.
    """
    regressors = np.asarray(regressors, dtype=np.float32).reshape(len(anchors), 4 + 2 * NUM_KEYPOINTS)
    logits = np.clip(np.asarray(logits, dtype=np.float64).reshape(-1), -SCORE_CLIP, SCORE_CLIP)
    scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    keep = scores >= min_score
    raw, centre, scores = regressors[keep] / COORD_SCALE, anchors[keep], scores[keep]
    xy = raw[:, 0:2] + centre
    half = raw[:, 2:4] / 2.0
    boxes = np.concatenate([xy - half, xy + half], axis=1)
    keypoints = raw[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) + centre[:, None, :]
    return boxes, keypoints, scores


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (xmin, ymin, xmax, ymax) box with each row of ``boxes`` (K, 4)."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 iou_threshold: float = NMS_IOU) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mediapipe's weighted non-maximum suppression.

    The best remaining candidate and every remaining one overlapping it by more than
    ``iou_threshold`` (itself included) become one face: their boxes and keypoints averaged with
    their scores as weights, the best one's score kept. Inputs and outputs as ``decode``'s,
    outputs by decreasing score.
    """
    order = np.argsort(-scores, kind="stable")
    out_boxes, out_points, out_scores = [], [], []
    while order.size:
        best = order[0]
        overlapping = box_iou(boxes[best], boxes[order]) > iou_threshold
        overlapping[0] = True
        group = order[overlapping]
        weights = scores[group][:, None]
        out_boxes.append((boxes[group] * weights).sum(axis=0) / weights.sum())
        out_points.append((keypoints[group] * weights[:, :, None]).sum(axis=0) / weights.sum())
        out_scores.append(scores[best])
        order = order[~overlapping]
    if not out_scores:
        return np.zeros((0, 4), np.float32), np.zeros((0, NUM_KEYPOINTS, 2), np.float32), np.zeros((0,), np.float32)
    return (np.asarray(out_boxes, np.float32), np.asarray(out_points, np.float32), np.asarray(out_scores, np.float32))


def letterbox(image_rgb: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, float, float, float]:
    """The (1, size, size, 3) float32 input in [-1, 1] and the mapping back: (input, scale,
    x offset, y offset), so that an input pixel ``u`` is image pixel ``(u - x offset) / scale``.

    The image is scaled to fit and centred, the rest zero (-1 after scaling), bilinear, with its
    corners mapped onto the input's corners (as mediapipe's ``ImageToTensorCalculator``).
    """
    h, w = image_rgb.shape[:2]
    scale = size / max(h, w)
    dx, dy = (size - w * scale) / 2.0, (size - h * scale) / 2.0
    m = np.array([[scale, 0.0, dx], [0.0, scale, dy]], dtype=np.float64)
    boxed = cv2.warpAffine(image_rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(0, 0, 0))
    tensor = boxed.astype(np.float32)[None] * np.float32(2.0 / 255.0) - np.float32(1.0)
    return tensor, scale, dx, dy


def keypoints_to_landmarks(keypoints: np.ndarray) -> np.ndarray | None:
    """A face's six keypoints (pixels) -> MTCNN-style landmarks (5, 2) float32 pixels in
    ``faceattr.landmarks.LANDMARK_NAMES`` order, or None where they fit ``KEYPOINT_FRAME`` badly.

    The similarity that carries the eyes, nose tip and mouth centre onto ``KEYPOINT_FRAME`` is
    fitted; its inverse carries ``UTKFACE_TEMPLATE``'s five points into the photo.
    """
    points = np.asarray(keypoints, dtype=np.float64)[:4]
    if not np.isfinite(points).all() or points[1, 0] - points[0, 0] <= 1.0:
        return None
    frame = np.asarray(KEYPOINT_FRAME, dtype=np.float64)
    m = similarity(points, frame)
    if residual(points, m, frame) > MAX_KEYPOINT_RESIDUAL:
        return None
    inverse = cv2.invertAffineTransform(m)
    template = np.asarray(UTKFACE_TEMPLATE, dtype=np.float64)
    return (template @ inverse[:, :2].T + inverse[:, 2]).astype(np.float32)


class BlazeFaceDetector:
    """BlazeFace short range through LiteRT: ``detect(image_bgr) -> [Detection]`` with a score and
    MTCNN-style landmarks (``keypoints_to_landmarks``).

    ``min_confidence``: least score kept (mediapipe's default 0.5). ``threads``: interpreter
    threads (1: the network is ~0.2 GFLOP, threads cost more than they bring on small inputs).
    Made for faces that fill a good part of the picture (a face narrower than about an eighth of
    the image's longer side, 75-80 px in a 640x480 frame, is missed): webcams, portraits, the loosely cropped photos of
    fairface-dev; crowds are MTCNN's. Not thread-safe: one detector per thread.
    """

    name = "blazeface"

    def __init__(self, min_confidence: float = 0.5, threads: int = 1, weights: str | Path = WEIGHTS) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter  # deferred: LiteRT's native runtime
        except ImportError:
            raise ModelError("detector=blazeface needs the ai-edge-litert package "
                             "(pip install -r requirements.txt)") from None
        weights = Path(weights)
        if not weights.is_file():
            raise ModelError(f"{weights}: BlazeFace weights missing (they ship with the package)")
        try:
            self._interp = Interpreter(model_path=str(weights), num_threads=max(1, int(threads or os.cpu_count() or 1)))
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{weights}: cannot load the TensorFlow Lite model ({exc})") from None
        self._input = self._interp.get_input_details()[0]["index"]
        outputs = {tuple(d["shape"][1:]): d["index"] for d in self._interp.get_output_details()}
        if (NUM_ANCHORS, 16) not in outputs or (NUM_ANCHORS, 1) not in outputs:
            raise ModelError(f"{weights}: not BlazeFace short range (outputs {sorted(outputs)})")
        self._regressors, self._logits = outputs[(NUM_ANCHORS, 16)], outputs[(NUM_ANCHORS, 1)]
        self.min_confidence = float(min_confidence)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], cache_dir: str | Path | None = None) -> BlazeFaceDetector:
        """Built from a filled ``detector`` node (``inference.detectors.detector_settings``): its
        ``min_confidence``; ``cache_dir`` is unused (the weights ship with the package)."""
        return cls(min_confidence=settings["min_confidence"])

    def raw(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces of an (H, W, 3) uint8 BGR image: ``boxes`` (K, 4) (xmin, ymin, xmax, ymax),
        ``keypoints`` (K, 6, 2) (``KEYPOINT_NAMES`` order) and ``scores`` (K,), in image pixels."""
        if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            shape = getattr(image_bgr, "shape", None)
            raise InputError(f"detector: expected an (H, W, 3) BGR image, got shape {shape}")
        tensor, scale, dx, dy = letterbox(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
        self._interp.set_tensor(self._input, tensor)
        self._interp.invoke()
        boxes, keypoints, scores = decode(self._interp.get_tensor(self._regressors)[0],
                                          self._interp.get_tensor(self._logits)[0], min_score=self.min_confidence)
        boxes, keypoints, scores = weighted_nms(boxes, keypoints, scores)
        offset = np.array([dx, dy], dtype=np.float32)
        boxes = (boxes.reshape(-1, 2, 2) * INPUT_SIZE - offset).reshape(-1, 4) / scale
        keypoints = (keypoints * INPUT_SIZE - offset) / scale
        # Image-left eye first (mediapipe names them from the person's view; a mirror swaps them).
        swap = keypoints[:, 0, 0] > keypoints[:, 1, 0]
        keypoints[swap, 0:2] = keypoints[swap, 1::-1]
        keypoints[swap, 4:6] = keypoints[swap, 5:3:-1]
        return boxes, keypoints, scores

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Faces in an (H, W, 3) uint8 BGR image, boxes in its pixels, clipped to it."""
        boxes, keypoints, scores = self.raw(image_bgr)
        height, width = image_bgr.shape[:2]
        out = []
        for (x0, y0, x1, y1), points, score in zip(boxes, keypoints, scores, strict=True):
            ix0, iy0 = max(0, round(float(x0))), max(0, round(float(y0)))
            ix1, iy1 = min(width, round(float(x1))), min(height, round(float(y1)))
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            out.append(Detection(ix0, iy0, ix1 - ix0, iy1 - iy0, float(score), keypoints_to_landmarks(points)))
        log.debug("blazeface: %d face(s) >= %.2f in %dx%d image", len(out), self.min_confidence, width, height)
        return out

