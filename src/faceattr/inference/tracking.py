"""Stable face ids and smoothed labels across video frames (an IoU tracker).

Each update matches the new detections to the live tracks by box overlap (greedy, highest IoU
first; faces in a webcam frame are few, so the optimal Hungarian assignment buys nothing). A
matched track takes the new box and adds the new prediction to a window of recent ones: age
is their mean, gender and race the class with the largest summed probability. A track that
finds no detection keeps its last box and labels for up to ``max_missed`` updates, so a
missed detection or two doesn't make the label flicker; then it is dropped.

The model need not see every face in every frame: with ``refresh_every = k`` a track's face
goes through the model when the track is new and then on every k-th frame it is matched
(:meth:`IoUTracker.needs_prediction` says which detections of a frame need one). The labels
average many predictions anyway, so k = 2-3 costs no visible quality and divides the model
work per frame by k.

No model is needed: predictions are any objects with ``age``, ``gender_probs`` and
``race_probs`` (``predictor.FacePrediction``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from faceattr.inference.detectors import Detection
from faceattr.inference.predictor import FacePrediction

Box = tuple[int, int, int, int]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes, in [0, 1]."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def iou_matrix(boxes_a: Sequence[Sequence[float]], boxes_b: Sequence[Sequence[float]]) -> np.ndarray:
    """(len(a), len(b)) IoU of every pair of ``(x, y, w, h)`` boxes."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def greedy_match(ious: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) taken in order of decreasing IoU, each row and column at most once,
    only pairs with IoU >= ``threshold``."""
    pairs: list[tuple[int, int]] = []
    if ious.size == 0:
        return pairs
    rows, cols = np.nonzero(ious >= threshold)
    order = np.argsort(-ious[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            pairs.append((r, c))
            used_r.add(r)
            used_c.add(c)
    return pairs


@dataclass
class Track:
    """One face followed over frames. ``box`` is (x, y, w, h) pixels; ``missed`` counts the
    updates since it was last detected; ``history`` holds its recent predictions."""

    track_id: int
    box: Box
    window: int = 30
    hits: int = 1
    missed: int = 0
    since_prediction: int = 0  # matched frames since the model last saw this face
    history: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.history = deque(self.history, maxlen=max(1, int(self.window)))

    def add(self, prediction: FacePrediction | None) -> None:
        if prediction is not None:
            self.history.append(prediction)
            self.since_prediction = 0
        else:
            self.since_prediction += 1

    @property
    def prediction(self) -> FacePrediction | None:
        """The smoothed prediction: mean age (years), classes by summed probabilities over the
        window; ``*_confidence`` is the mean probability of the chosen class. None if no
        prediction was added yet."""
        if not self.history:
            return None
        age = float(np.mean([p.age for p in self.history]))
        g = np.mean([p.gender_probs for p in self.history], axis=0)
        r = np.mean([p.race_probs for p in self.history], axis=0)
        return FacePrediction.from_outputs(age, g, r)


class IoUTracker:
    """Matches detections to tracks by IoU and smooths each track's predictions.

    ``iou_threshold``: least overlap for a detection to continue a track. ``max_missed``:
    updates a track survives without a detection (its box and labels stay). ``window``:
    predictions averaged per track. ``refresh_every``: a matched track wants a new prediction
    every this many frames (1 = every frame).
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10, window: int = 30,
                 refresh_every: int = 1) -> None:
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self.window = int(window)
        if int(refresh_every) < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.refresh_every = int(refresh_every)
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)

    @staticmethod
    def _boxes(detections: Sequence[Detection | Box]) -> list[Box]:
        return [tuple(int(v) for v in (d.box if isinstance(d, Detection) else d)) for d in detections]

    def _match(self, boxes: list[Box]) -> list[tuple[int, int]]:
        """(track index, box index) pairs, greedy by IoU (see ``greedy_match``)."""
        return greedy_match(iou_matrix([t.box for t in self.tracks], boxes), self.iou_threshold)

    def needs_prediction(self, detections: Sequence[Detection | Box]) -> list[bool]:
        """Which of this frame's detections the model should see, without changing any track:
        those that start a new track, a track with no prediction yet, or a track whose last
        prediction is ``refresh_every`` or more matched frames old. ``update`` matches the
        same way, so pass it None for the others."""
        boxes = self._boxes(detections)
        need = [True] * len(boxes)
        for r, c in self._match(boxes):
            track = self.tracks[r]
            need[c] = not track.history or track.since_prediction + 1 >= self.refresh_every
        return need

    def update(self, detections: Sequence[Detection | Box],
               predictions: Sequence[FacePrediction | None] | None = None) -> list[Track]:
        """Advance one frame; returns the live tracks (including those kept while missed).

        ``detections``: ``Detection``s or ``(x, y, w, h)`` boxes of this frame;
        ``predictions``: one per detection (or None to track boxes only).
        """
        boxes = self._boxes(detections)
        preds = list(predictions) if predictions is not None else [None] * len(boxes)
        if len(preds) != len(boxes):
            raise ValueError(f"{len(boxes)} detections but {len(preds)} predictions")
        pairs = self._match(boxes)
        matched_tracks = {r for r, _ in pairs}
        matched_dets = {c for _, c in pairs}
        for r, c in pairs:
            track = self.tracks[r]
            track.box, track.missed, track.hits = boxes[c], 0, track.hits + 1
            track.add(preds[c])
        for r, track in enumerate(self.tracks):
            if r not in matched_tracks:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for c, box in enumerate(boxes):
            if c not in matched_dets:
                track = Track(next(self._ids), box, window=self.window)
                track.add(preds[c])
                self.tracks.append(track)
        return list(self.tracks)
