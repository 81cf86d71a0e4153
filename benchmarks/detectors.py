"""Measure the project's face detectors on a folder of real photos (default: fairface-dev).

    .venv/bin/python benchmarks/detectors.py [--photos DIR] [--out benchmarks/detectors.json]

Each photo holds one labelled person, roughly centred. For every detector
(``faceattr.inference.detectors.make_detector``: haar, at its photo and its video settings;
mtcnn, the project's NumPy port, with ``min_size`` 40 and 20 at ``min_confidence`` 0.9, and
min_size 40 at 0.8, the default for photos; blazeface, BlazeFace short range through LiteRT, the
default for video; and the ``mtcnn`` package's own TensorFlow code at the default settings) one row:

- ``missed`` / ``miss_rate``: photos (count / fraction of ``photos``) without a detection whose
  box centre lies in the middle half of the image (x and y within [1/4, 3/4] of width and height),
  i.e. the labelled person was not found. ``no_detection``: photos with no detection at all.
- ``landmarks_share``: fraction of all photos whose found (central) face comes with five landmarks.
- ``ms_mean`` / ``ms_median``: milliseconds per photo of ``detect()`` alone (decoding excluded),
  over every photo, after one untimed warm-up call on the first photo.
- ``frame_ms_median`` / ``frame_faces``: milliseconds per 640x480 video frame (median) and faces
  found per frame (mean) on the 90 frames of the video benchmark's two-face clip
  (``benchmarks/video.make_clip``, written as mp4 and decoded), after one untimed call;
  ``frame_ms_median_4faces`` / ``frame_faces_4faces``: the same on its four-face clip.

Rows from other sources already in ``--out`` (``benchmarks/detector_candidates.py``) are kept.
OpenCV and TensorFlow are capped at ``--threads`` threads (default 2). Exits 0 with a one-line
message when the photo folder is absent.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "external" / "fairface-dev"
DEFAULT_OUT = ROOT / "benchmarks" / "detectors.json"
SOURCE = "faceattr.inference.detectors"
#: (detector label, make_detector settings)
DETECTORS: list[tuple[str, dict[str, Any]]] = [
    ("haar", {"name": "haar"}),
    ("haar", {"name": "haar", "scale_factor": 1.2}),  # the video settings (conf/detector/haar.yaml)
    ("mtcnn", {"name": "mtcnn", "min_confidence": 0.9, "min_size": 40, "max_side": 1280}),
    ("mtcnn", {"name": "mtcnn", "min_confidence": 0.9, "min_size": 20, "max_side": 1280}),
    ("mtcnn", {"name": "mtcnn", "min_confidence": 0.8, "min_size": 40, "max_side": 1280}),  # the default
    ("blazeface", {"name": "blazeface", "min_confidence": 0.5}),  # the default for video
    ("mtcnn-package", {"min_confidence": 0.8, "min_size": 40}),  # the package's TensorFlow code, same weights
]


class PackageMTCNN:
    """The ``mtcnn`` package's own TensorFlow pipeline, beside the project's NumPy port of it
    (``inference/mtcnn_numpy.py``, same weights). mtcnn 1.0's pyramid breaks for a minimum face
    above ~20 px, so the image is shrunk by ``20 / min_size`` instead (the same search)."""

    def __init__(self, min_confidence: float = 0.8, min_size: int = 40) -> None:
        from mtcnn import MTCNN

        self._mtcnn = MTCNN()
        self.min_confidence = min_confidence
        self.factor = min(1.0, 20.0 / min_size)

    def detect(self, image_bgr: np.ndarray) -> list[SimpleNamespace]:
        f = self.factor
        small = cv2.resize(image_bgr, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else image_bgr
        rows = np.asarray(self._mtcnn.detect_faces(cv2.cvtColor(small, cv2.COLOR_BGR2RGB), min_face_size=20,
                                                   output_type="numpy", box_format="xywh")).reshape(-1, 16)
        return [SimpleNamespace(x=r[1] / f, y=r[2] / f, w=r[3] / f, h=r[4] / f, score=float(r[5]),
                                landmarks=np.stack([r[6:11], r[11:16]], axis=1) / f)
                for r in rows if r[5] >= self.min_confidence]


def photo_paths(folder: Path) -> list[Path]:
    """The photos listed in ``labels.csv`` (column ``file``), else every ``*.jpg``, sorted."""
    labels = folder / "labels.csv"
    if labels.is_file():
        with labels.open(newline="") as f:
            return [folder / row["file"] for row in csv.DictReader(f)]
    return sorted(folder.glob("*.jpg"))


def is_central(x: float, y: float, w: float, h: float, shape: tuple[int, ...]) -> bool:
    """Whether the box centre lies within the middle half of the image (both axes)."""
    height, width = shape[:2]
    cx, cy = x + w / 2, y + h / 2
    return width / 4 <= cx <= 3 * width / 4 and height / 4 <= cy <= 3 * height / 4


def measure(detector: Any, images: list[np.ndarray]) -> dict[str, Any]:
    """Miss counts, landmark share and ms/photo of ``detector.detect`` over ``images``."""
    detector.detect(images[0])  # warm-up, untimed
    missed = no_detection = with_landmarks = 0
    times_ms: list[float] = []
    for image in images:
        t0 = time.perf_counter()
        found = detector.detect(image)
        times_ms.append((time.perf_counter() - t0) * 1000.0)
        central = [d for d in found if is_central(d.x, d.y, d.w, d.h, image.shape)]
        no_detection += not found
        if not central:
            missed += 1
            continue
        best = max(central, key=lambda d: d.score)
        with_landmarks += best.landmarks is not None and np.shape(best.landmarks) == (5, 2)
    n = len(images)
    return {"photos": n, "missed": missed, "miss_rate": round(missed / n, 4), "no_detection": no_detection,
            "landmarks_share": round(with_landmarks / n, 4), "ms_mean": round(statistics.fmean(times_ms), 2),
            "ms_median": round(statistics.median(times_ms), 2)}


def clip_frames(folder: Path, faces: int, frames: int = 90) -> list[np.ndarray]:
    """The decoded 640x480 frames of the video benchmark's clip with ``faces`` faces."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.video import make_clip

    clip = make_clip(folder / f"{faces}_faces.mp4", frames, faces=faces)
    cap = cv2.VideoCapture(str(clip))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def measure_frames(detector: Any, frames: list[np.ndarray]) -> tuple[float, float]:
    """(median ms per frame, mean faces found per frame) of ``detector.detect`` over ``frames``."""
    detector.detect(frames[0])  # warm-up, untimed
    times_ms, found = [], []
    for frame in frames:
        t0 = time.perf_counter()
        found.append(len(detector.detect(frame)))
        times_ms.append((time.perf_counter() - t0) * 1000.0)
    return round(statistics.median(times_ms), 2), round(statistics.fmean(found), 2)


def save_rows(out: Path, rows: list[dict[str, Any]], source: str) -> None:
    """Write ``rows`` into ``out``, replacing earlier rows of ``source`` and keeping the others."""
    kept = [r for r in json.loads(out.read_text()) if r.get("source") != source] if out.is_file() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows + kept, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of photos (+ labels.csv)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file for the rows")
    parser.add_argument("--threads", type=int, default=2, help="OpenCV/TensorFlow thread cap")
    args = parser.parse_args(argv)
    if not args.photos.is_dir():
        print(f"skipped: photo folder {args.photos} not found")
        return 0
    cv2.setNumThreads(args.threads)
    import tensorflow as tf  # before any graph is built

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from faceattr.inference.detectors import make_detector

    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in photo_paths(args.photos)]
    if not images or any(im is None for im in images):
        print(f"error: no photos, or an unreadable one, in {args.photos}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="faceattr-frames-") as tmp:
        clips = {faces: clip_frames(Path(tmp), faces) for faces in (2, 4)}
    machine = f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at start, {dt.date.today()}"
    rows = []
    for label, settings in DETECTORS:
        detector = PackageMTCNN(settings["min_confidence"], settings["min_size"]) if label == "mtcnn-package" \
            else make_detector(settings)
        result = measure(detector, images)
        for faces, frames in clips.items():
            ms, found = measure_frames(detector, frames)
            suffix = "" if faces == 2 else f"_{faces}faces"
            result.update({f"frame_ms_median{suffix}": ms, f"frame_faces{suffix}": found})
        row = {"detector": label, "settings": {**settings, "threads": args.threads}, **result,
               "source": SOURCE, "machine": machine}
        print(json.dumps(row))
        rows.append(row)
    save_rows(args.out, rows, SOURCE)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
