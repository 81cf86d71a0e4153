"""A labelled photo set as a training source: a folder (or archive) with a ``labels.csv``.

The CSV is the one ``evaluate --labels`` reads (``data.labels_csv``): ``file``, an exact ``age``
or an age group (``age_lo``/``age_hi``, or ``age_group`` such as ``20-29`` or ``70+``), ``gender``,
``race``; any label may be empty (that head then does not learn from the photo). An optional
``split`` column (train/val/test) is honoured; without it the toolkit splits the source as it
splits UTKFace.

Every row is checked before anything is trained: an unknown class, an age or age group that
does not parse, ``age_lo > age_hi``, a duplicate or missing file, a bad ``split`` value is one
``InputError`` naming the CSV and its row. Files whose bytes are not an image are kept here and
reported when they are aligned (``inference.chips``), where they are skipped and counted.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from faceattr.data.labels_csv import labels_path, read_labels
from faceattr.data.utkface import content_hashes
from faceattr.errors import InputError
from faceattr.labels import age_to_bin

log = logging.getLogger(__name__)

#: Split names a ``split`` column may hold.
SPLIT_NAMES = ("train", "val", "test")
#: Years added to an open-ended group's lower end (e.g. 70+) to place it in an age bin.
OPEN_GROUP_SPAN = 10.0
_GROUP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:-\s*(\d+(?:\.\d+)?)|(\+))\s*$")


def parse_age_group(text: str) -> tuple[float, float] | None:
    """``"20-29"`` -> (20, 29), ``"70+"`` -> (70, inf), anything else -> None (years)."""
    m = _GROUP.match(str(text))
    if not m:
        return None
    lo = float(m.group(1))
    return (lo, math.inf) if m.group(3) else (lo, float(m.group(2)))


def _fill_age_groups(labels: pd.DataFrame, raw: pd.DataFrame, csv_path: Path) -> None:
    """Rows with only an ``age_group`` text get ``age_lo``/``age_hi`` from it (in place)."""
    if "age_group" not in raw:
        return
    for i, text in enumerate(raw["age_group"]):
        if pd.isna(text) or str(text).strip() == "" or not math.isnan(labels.at[i, "age_lo"]):
            continue
        group = parse_age_group(text)
        if group is None:
            raise InputError(f"{csv_path}: row {i + 2}: age group {text!r} does not parse (expected e.g. 20-29 or 70+)")
        if group[1] < group[0]:
            raise InputError(f"{csv_path}: row {i + 2}: age group {text!r} ends below its start")
        labels.loc[i, ["age_lo", "age_hi"]] = group


def age_midpoint(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A representative age (years) per interval, to place it in an age bin: the midpoint, or
    ``lo + OPEN_GROUP_SPAN / 2`` for an open group; NaN without an age."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return np.where(np.isinf(hi), lo + OPEN_GROUP_SPAN / 2, (lo + hi) / 2)


def index_labelled(folder: Path, name: str, age_bin_edges: list[float], cache_dir: Path | None = None) -> pd.DataFrame:
    """The rows of the source ``name`` whose ``labels.csv`` is in ``folder`` (or is ``folder``).

    Columns: ``image`` (``<name>/<file>``, unique across sources), ``path`` (the photo), ``age``
    (exact years or NaN), ``age_lo``/``age_hi`` (years; ``age_hi`` inf for an open group; NaN
    without an age), ``gender``/``race`` (class indices, -1 where not labelled), ``age_bin`` (of the
    exact age or the interval's midpoint; 0 without an age), ``sha1`` (of the photo's bytes),
    ``source`` (``name``) and ``own_split`` (the CSV's ``split``, or None). ``cache_dir`` keeps
    the photos' content hashes between runs (``utkface.content_hashes``).
    """
    csv_path = labels_path(folder)
    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""])
    labels = read_labels(csv_path)  # refuses a photo listed twice (labels_csv.duplicate_rows), as evaluate does
    _fill_age_groups(labels, raw, csv_path)
    own_split: list[str | None] = [None] * len(labels)
    if "split" in raw:
        for i, value in enumerate(raw["split"]):
            text = "" if pd.isna(value) else str(value).strip().lower()
            if text and text not in SPLIT_NAMES:
                raise InputError(f"{csv_path}: row {i + 2}: split {value!r} is not one of {', '.join(SPLIT_NAMES)}")
            own_split[i] = text or None
    files = []
    for i, path in enumerate(labels["path"]):
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{csv_path}: row {i + 2}: {labels['file'].iloc[i]}: no such image file")
        st = p.stat()
        files.append((os.path.relpath(p, csv_path.parent), st.st_size, st.st_mtime_ns))
    hashes = content_hashes(csv_path.parent, files, cache_dir)  # cached by name, size and time
    sha1 = [hashes[name][0] for name, _, _ in files]
    lo, hi = labels["age_lo"].to_numpy(float), labels["age_hi"].to_numpy(float)
    mid = age_midpoint(lo, hi)
    frame = pd.DataFrame({
        "image": [f"{name}/{f}" for f in labels["file"]],
        "path": [str(Path(p).resolve()) for p in labels["path"]],
        "age": labels["age"].to_numpy(float),
        "age_lo": lo, "age_hi": hi,
        "gender": labels["gender"].to_numpy(np.int64),
        "race": labels["race"].to_numpy(np.int64),
        "age_bin": np.where(np.isnan(mid), 0, age_to_bin(np.nan_to_num(mid), age_bin_edges)).astype(np.int64),
        "sha1": sha1,
        "source": name,
        "own_split": own_split,
    })
    log.info("indexed %s (%s): %d labelled photos (%d with an exact age, %d with an age group, %d without "
             "gender, %d without race)", name, csv_path, len(frame), int(frame["age"].notna().sum()),
             int((frame["age"].isna() & frame["age_lo"].notna()).sum()), int((frame["gender"] < 0).sum()),
             int((frame["race"] < 0).sum()))
    return frame
