"""Training photos onto the chip template, as ``run`` puts a detected face there; done once, cached.

A labelled photo that is not a UTKFace chip (FairFace's crops, a lab's photos) must reach the
model framed like the faces ``run`` gives it: detected (MTCNN), its five landmarks carried onto
the model's chip template (``align.ChipTemplate``) by a similarity warp (``align.align_face``).
``align_photos`` does that for a list of photos and writes each result as a ``CHIP_SIZE`` JPEG
chip (UTKFace's own size and format, so the data pipeline reads it like any chip);
``align_training_photos`` is the aligner the commands hand the data step (``data.prepare``).

Tight crops (FairFace's face fills the frame) hide the chin and forehead from the detector, so
each photo is first padded by ``pad`` x its side on every edge (border replicated). Where a photo
has several faces, the labelled one is the face nearest the centre among the large ones.

Each photo ends in one of four states, written to the cache's manifest and counted:

- ``aligned``: a face with plausible landmarks was found and warped onto the template;
- ``box``: a face was found but its landmarks are implausible (a turned head): its box crop with
  the detector's margin, exactly as ``run`` frames such a face;
- ``fallback``: no usable face; the photo is warped by the median landmarks of the source's
  aligned photos (the crops of one source share a framing, so this is where its face sits);
- ``skipped``: not decodable, or no face and no source framing to fall back on (the reason is kept).

The cache lives in ``<cache_dir>/chips-<key>/``, ``key`` hashing everything that changes a chip
(template, size, padding, detector settings, this module's ``VERSION``); chips are named by the
SHA-1 of the photo's bytes, so a photo is aligned once whatever its name or source. The manifest
is appended as photos are done: an interrupted run goes on where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from faceattr.inference.align import ChipTemplate, align_face, fit, similarity, warp
from faceattr.inference.detectors import Detection, MTCNNDetector, detector_settings

log = logging.getLogger(__name__)

#: Side of a written chip in pixels: UTKFace's, so every model resizes it as it resizes UTKFace's.
CHIP_SIZE = 200
#: JPEG quality of a written chip (the data pipeline decodes JPEG only).
JPEG_QUALITY = 95
#: Bumped when the way a chip is made changes, so older caches are not reused.
VERSION = 1
MANIFEST = "manifest.csv"
STATES = ("aligned", "box", "fallback", "skipped")
_FIELDS = ("sha1", "status", "reason", "landmarks")
#: A face counts as "large" when its box area is at least this share of the largest face's.
LARGE_FACE_SHARE = 0.25
#: Fewest aligned photos of a source from which its framing (median landmarks) is taken.
MIN_FOR_FALLBACK = 10


@dataclass(frozen=True)
class AlignSettings:
    """What decides a chip: the template, the padding (fraction of the photo's side added on each
    edge before detection) and the detector's settings (MTCNN's confidence and smallest face, px)."""

    template: ChipTemplate = ChipTemplate()
    pad: float = 0.25
    min_confidence: float = 0.8
    min_size: int = 40
    margin: float = 0.0  #: box crops (implausible landmarks), as the detector's config frames them in ``run``
    shift_y: float = 0.0

    def key(self) -> str:
        raw = json.dumps({"version": VERSION, "size": CHIP_SIZE, "quality": JPEG_QUALITY,
                          **{k: v for k, v in asdict(self).items() if k != "template"},
                          "template": self.template.to_dict()}, sort_keys=True)
        return hashlib.sha1(raw.encode()).hexdigest()[:12]


@dataclass
class ChipResult:
    """One photo's outcome: ``status`` aligned | box | fallback | skipped, ``chip`` the written file (None
    when skipped), ``reason`` why it fell back or was skipped, ``landmarks`` (5, 2) fractions of the
    photo's side where a face was found."""

    sha1: str
    status: str
    chip: Path | None
    reason: str = ""
    landmarks: np.ndarray | None = None


def pick_face(detections: Sequence[Detection], width: int, height: int) -> Detection | None:
    """The labelled face of a photo: among faces at least ``LARGE_FACE_SHARE`` of the largest's
    area, the one whose box centre is nearest the photo's centre (None without faces)."""
    if not detections:
        return None
    largest = max(d.w * d.h for d in detections)
    large = [d for d in detections if d.w * d.h >= LARGE_FACE_SHARE * largest]
    return min(large, key=lambda d: math.hypot(d.x + d.w / 2 - width / 2, d.y + d.h / 2 - height / 2))


class _Worker:
    """Detects and aligns photos in one process (the detector is built once per process)."""

    detector = None

    @classmethod
    def setup(cls, settings: AlignSettings, cache_dir: str | None) -> None:
        threadpool_limits(1)  # one process per core; MTCNN's small products gain nothing from more threads
        cls.settings = settings
        cls.detector = MTCNNDetector(min_confidence=settings.min_confidence, min_size=settings.min_size,
                                     max_side=None, cache_dir=cache_dir)

    @classmethod
    def detect(cls, job: tuple[str, str, str]) -> tuple[str, str, str, list | None]:
        """(sha1, photo path, chip path) -> (sha1, status, reason, landmarks as fractions or None);
        an aligned chip is written to its path."""
        sha1, path, chip = job
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None or image.size == 0:
            return sha1, "skipped", "not a decodable image", None
        h, w = image.shape[:2]
        p = round(cls.settings.pad * max(h, w))
        padded = cv2.copyMakeBorder(image, p, p, p, p, cv2.BORDER_REPLICATE) if p else image
        face = pick_face(cls.detector.detect(padded), padded.shape[1], padded.shape[0])
        if face is None:
            return sha1, "fallback", "no face found", None
        # As run frames a detected face: aligned by its landmarks, or the box crop where they are implausible.
        rgb, aligned = align_face(cv2.cvtColor(padded, cv2.COLOR_BGR2RGB), face, cls.settings.template, CHIP_SIZE,
                                  cls.settings.margin, cls.settings.shift_y)
        _write_chip(Path(chip), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not aligned:
            _, err = fit(face.landmarks, cls.settings.template, CHIP_SIZE)
            return sha1, "box", f"implausible landmarks (residual {err:.2f}): the box crop, as run frames it", None
        return sha1, "aligned", "", ((face.landmarks - p) / max(h, w)).round(5).tolist()


def _write_chip(path: Path, chip_bgr: np.ndarray) -> None:
    ok, data = cv2.imencode(".jpg", chip_bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"{path}: JPEG encoding failed")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)


def _read_manifest(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    done = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if set(_FIELDS) <= set(row) and row["status"] in STATES:
                done[row["sha1"]] = row
    return done


def align_photos(photos: Sequence[tuple[str, str]], cache_dir: Path, settings: AlignSettings | None = None,
                 workers: int | None = None, weights_dir: str | None = None,
                 desc: str = "aligning") -> list[ChipResult]:
    """Put each photo onto the chip template (see the module docstring); cached.

    ``photos``: ``(sha1 of the photo's bytes, path)`` pairs. Returns one ``ChipResult`` per pair,
    in order. ``workers`` processes detect in parallel (default: the CPU count). ``weights_dir``
    keeps MTCNN's converted weights. Progress goes to stderr; the counts to the log.
    """
    settings = settings or AlignSettings()
    folder = Path(cache_dir) / f"chips-{settings.key()}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps({"version": VERSION, "chip_size": CHIP_SIZE,
                                                      "pad": settings.pad, "min_confidence": settings.min_confidence,
                                                      "min_size": settings.min_size,
                                                      "template": settings.template.to_dict()}, indent=2))
    manifest = folder / MANIFEST
    done = _read_manifest(manifest)
    unique = dict(photos)  # one job per content
    todo = [(s, p, str(folder / f"{s}.jpg")) for s, p in unique.items() if s not in done]
    if todo:
        log.info("aligning %d photos onto the chip template (%d from cache) into %s", len(todo),
                 len(unique) - len(todo), folder)
        new_file = not manifest.is_file()
        workers = max(1, min(int(workers or os.cpu_count() or 1), len(todo)))
        # Spawned, not forked: the calling process may hold TensorFlow's threads (train, tests), and a
        # child forked from those can die or hang.
        context = multiprocessing.get_context("spawn")
        with open(manifest, "a", newline="") as fh, \
                ProcessPoolExecutor(workers, mp_context=context, initializer=_Worker.setup,
                                    initargs=(settings, weights_dir)) as pool:
            writer = csv.DictWriter(fh, fieldnames=_FIELDS)
            if new_file:
                writer.writeheader()
            results = pool.map(_Worker.detect, todo, chunksize=16)
            for sha1, status, reason, landmarks in tqdm(results, total=len(todo), desc=desc, unit="photo",
                                                         file=sys.stderr, mininterval=5):
                row = {"sha1": sha1, "status": status, "reason": reason,
                       "landmarks": "" if landmarks is None else json.dumps(landmarks)}
                writer.writerow(row)
                fh.flush()  # each photo is recorded as it is done: an interrupted run resumes here
                done[sha1] = row
    return _with_fallback([done[s] for s, _ in photos], dict(photos), folder, settings)


def _with_fallback(rows: list[dict], paths: dict[str, str], folder: Path,
                   settings: AlignSettings) -> list[ChipResult]:
    """``rows`` (manifest rows, one per photo) as results; the photos without a usable face are
    warped by the median landmarks of the aligned ones (written once, as ``<sha1>.fallback-<framing>.jpg``)."""
    found = [np.asarray(json.loads(r["landmarks"])) for r in rows if r["status"] == "aligned" and r["landmarks"]]
    median = np.median(np.stack(found), axis=0) if len(found) >= MIN_FOR_FALLBACK else None
    # The framing is named in the file, so a fallback chip is made again when the source's framing moves.
    framing = "" if median is None else hashlib.sha1(median.round(3).tobytes()).hexdigest()[:8]
    out = []
    for row in rows:
        sha1, status, reason = row["sha1"], row["status"], row["reason"]
        landmarks = np.asarray(json.loads(row["landmarks"])) if row["landmarks"] else None
        if status in ("aligned", "box"):
            out.append(ChipResult(sha1, status, folder / f"{sha1}.jpg", reason, landmarks))
        elif status == "skipped":
            out.append(ChipResult(sha1, status, None, reason))
        elif median is None:
            out.append(ChipResult(sha1, "skipped", None, f"{reason}, and too few aligned photos in its source "
                                                         f"({len(found)} < {MIN_FOR_FALLBACK}) to fall back on"))
        else:
            chip = folder / f"{sha1}.fallback-{framing}.jpg"
            if not chip.is_file():
                image = cv2.imread(paths[sha1], cv2.IMREAD_COLOR)
                side = max(image.shape[:2])
                m = similarity(median * side, settings.template.at(CHIP_SIZE))
                _write_chip(chip, warp(image, m, CHIP_SIZE))
            out.append(ChipResult(sha1, "fallback", chip, reason))
    return out


def count_states(results: Sequence[ChipResult]) -> dict[str, int]:
    """``{state: n}`` for every state of ``STATES``."""
    counts = dict.fromkeys(STATES, 0)
    for r in results:
        counts[r.status] += 1
    return counts


def align_training_photos(photos: Sequence[tuple[str, str]], cache_dir: Path, pad: float, workers: int | None,
                          weights_dir: str, desc: str) -> tuple[list[ChipResult], dict[str, int]]:
    """The data step's aligner (``data.prepare.FaceAligner``): ``photos`` onto the shipped models'
    chip template (UTKFace's), framed as ``run`` frames a face with its default detector (MTCNN,
    its schema settings), ``pad`` x a photo's side added on every edge first. Returns the results
    (:func:`align_photos`) and their counts (:func:`count_states`)."""
    detector = detector_settings({"name": "mtcnn"})
    settings = AlignSettings(pad=float(pad), min_confidence=float(detector["min_confidence"]),
                             min_size=int(detector["min_size"]), margin=float(detector["margin"]),
                             shift_y=float(detector["shift_y"]))
    results = align_photos(photos, cache_dir, settings, workers=workers, weights_dir=weights_dir, desc=desc)
    return results, count_states(results)
