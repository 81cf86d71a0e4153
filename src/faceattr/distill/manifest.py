"""The manifest of unlabelled faces: every face found, the teacher's labels, kept or why not.

``manifest.csv`` in the run folder has one row per face (or per file without a usable face):
``source`` (file), ``frame`` (video frame index, empty for photos), ``face`` (index in the
image), ``x, y, w, h`` (box, pixels), ``aligned``, the teacher's ``age`` (years), ``gender``,
``gender_confidence``, ``race``, ``race_confidence`` (probabilities in [0, 1]), ``kept`` and
``reason`` (``kept``, or why the face is not used), and ``chip`` (the saved face crop the
student trains on, for kept faces).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from faceattr.distill.sources import KEPT, FaceRecord
from faceattr.labels import GENDERS, RACES

COLUMNS = ["source", "frame", "face", "x", "y", "w", "h", "aligned", "age", "gender", "gender_confidence", "race",
           "race_confidence", "kept", "reason", "chip"]


def confidence_reason(gender_confidence: float, race_confidence: float, min_confidence: float) -> str:
    """``kept`` when both confidences reach ``min_confidence``, else which fell short."""
    short = [f"{name} confidence {value:.2f} < {min_confidence:g}"
             for name, value in (("gender", gender_confidence), ("race", race_confidence)) if value < min_confidence]
    return "; ".join(short) if short else KEPT


def apply_teacher(records: Sequence[FaceRecord], outputs: Mapping[str, np.ndarray],
                  min_confidence: float) -> list[dict]:
    """Manifest rows for ``records``; ``outputs`` (``age`` (K,), ``gender`` (K, 2), ``race`` (K, 5))
    hold the teacher's answers for the records still ``kept`` (with a chip), in order. Records
    whose confidences fall short get the reason; the rows carry a ``_out`` index into ``outputs``
    for the kept ones."""
    rows, k = [], 0
    for record in records:
        row = {"source": record.source, "frame": record.frame, "face": record.face, "aligned": record.aligned,
               "kept": False, "reason": record.reason, "chip": ""}
        if record.box is not None:
            row.update(zip(("x", "y", "w", "h"), record.box, strict=True))
        if record.kept and record.chip is not None:
            g, r = outputs["gender"][k], outputs["race"][k]
            gi, ri = int(np.argmax(g)), int(np.argmax(r))
            row.update(age=round(float(outputs["age"][k]), 2), gender=GENDERS[gi],
                       gender_confidence=round(float(g[gi]), 4), race=RACES[ri],
                       race_confidence=round(float(r[ri]), 4), _out=k)
            record.reason = confidence_reason(float(g[gi]), float(r[ri]), float(min_confidence))
            row.update(reason=record.reason, kept=record.kept)
            k += 1
        rows.append(row)
    return rows


def write_manifest(rows: Sequence[Mapping], path: Path) -> Path:
    """Write ``rows`` (see the module docstring) as CSV to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if row.get(key) is None else row.get(key, "")) for key in COLUMNS})
    return path
