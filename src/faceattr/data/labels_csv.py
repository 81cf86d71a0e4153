"""Labelled photo folders: a ``labels.csv`` beside the photos, for ``evaluate --labels``.

Columns (a header row; any other columns are kept but unused):

- ``file``: the photo's path, relative to the CSV's folder (or absolute).
- ``age`` (years), or ``age_lo`` and ``age_hi`` (an age group, years, both ends included;
  ``age_hi`` empty = open-ended, e.g. 70+). An exact age counts as the group [age, age].
- ``gender``: ``male``/``female`` (or UTKFace's codes 0/1).
- ``race``: ``white``/``black``/``asian``/``indian``/``others`` (or UTKFace's codes 0-4).

Every label cell may be empty: that photo is then left out of that task's figures only.
Ages are finite numbers of years from 0 to ``MAX_AGE`` (an open group leaves ``age_hi`` empty);
each photo is listed once (``duplicate_rows``: the same path twice is refused, naming both rows).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from faceattr.errors import InputError
from faceattr.labels import GENDERS, RACES

LABELS_FILE = "labels.csv"
#: Columns of ``read_labels``'s frame.
COLUMNS = ("file", "path", "age", "age_lo", "age_hi", "gender", "race")
#: The oldest age (years) a label may give: above the oldest recorded human age, so a larger
#: value is a typing or unit error (months, days, 1e6), not a person.
MAX_AGE = 130.0


def class_codes(column: pd.Series, names: tuple[str, ...], where: Path, what: str) -> np.ndarray:
    """Class names or codes -> indices (-1 where empty); InputError naming the first bad cell."""
    lookup = {name: i for i, name in enumerate(names)} | {str(i): i for i in range(len(names))}
    out = np.full(len(column), -1, dtype=int)
    for i, value in enumerate(column):
        if pd.isna(value) or str(value).strip() == "":
            continue
        key = str(value).strip().lower()
        key = key[:-2] if key.endswith(".0") else key  # pandas reads a column of codes with gaps as floats
        if key not in lookup:
            raise InputError(f"{where}: row {i + 2}: {what} {value!r} is not one of {', '.join(names)}")
        out[i] = lookup[key]
    return out


def _ages(frame: pd.DataFrame, column: str, where: Path) -> np.ndarray:
    if column not in frame:
        return np.full(len(frame), math.nan)
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
    bad = frame[column].notna() & np.isnan(values)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{where}: row {row + 2}: {column} {frame[column].iloc[row]!r} is not a number of years")
    if np.isinf(values).any():
        row = int(np.flatnonzero(np.isinf(values))[0])
        raise InputError(f"{where}: row {row + 2}: {column} {frame[column].iloc[row]!r} is not a finite number of "
                         "years (an open age group leaves age_hi empty)")
    if (values < 0).any():
        row = int(np.flatnonzero(values < 0)[0])
        raise InputError(f"{where}: row {row + 2}: {column} {values[row]:g} is negative")
    if (values > MAX_AGE).any():
        row = int(np.flatnonzero(values > MAX_AGE)[0])
        raise InputError(f"{where}: row {row + 2}: {column} {values[row]:g} is above {MAX_AGE:g} years")
    return values


def duplicate_rows(files: list[str], paths: list[str], where: Path) -> None:
    """Refuse a labels file that lists one photo twice: an ``InputError`` naming the file, the
    rows (CSV line numbers, the header being line 1) and the photo as written (``files``).
    ``paths``: each row's resolved photo path, in file order (``a.jpg`` and ``./a.jpg`` are one
    photo). Shared by every reader of the format."""
    first_row: dict[str, int] = {}
    repeats: list[tuple[int, int, str]] = []
    for i, (file, path) in enumerate(zip(files, paths, strict=True)):
        key = os.path.normpath(str(path))
        if key in first_row:
            repeats.append((first_row[key], i + 2, str(file)))
        else:
            first_row[key] = i + 2
    if repeats:
        earlier, row, file = repeats[0]
        more = (f"; {len(repeats) - 1} more repeated row(s): {', '.join(str(r) for _, r, _ in repeats[1:6])}"
                if len(repeats) > 1 else "")
        raise InputError(f"{where}: row {row}: {file} is listed twice (also row {earlier}){more}")


def labels_path(path: str | Path) -> Path:
    """The CSV of a labelled folder (``<folder>/labels.csv``) or the CSV itself."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / LABELS_FILE
    if not p.is_file():
        raise InputError(f"{p}: no such labels file (give a folder holding {LABELS_FILE}, or the CSV)")
    return p


def read_labels(path: str | Path) -> pd.DataFrame:
    """The labelled photos of a folder or CSV (see the module docstring), one row per photo.

    Columns ``COLUMNS``: ``path`` the resolved photo path; ``age`` exact years or NaN;
    ``age_lo``/``age_hi`` the age group in years (``age_hi`` = inf for an open group, both NaN
    without an age); ``gender``/``race`` class indices (``labels``), -1 where not labelled.
    Raises ``InputError`` with the file and row for anything it can't read.
    """
    csv_path = labels_path(path)
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{csv_path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if "file" not in frame:
        raise InputError(f"{csv_path}: no 'file' column (columns: {', '.join(frame.columns) or 'none'})")
    if frame.empty:
        raise InputError(f"{csv_path}: no labelled photos")
    if frame["file"].isna().any():
        raise InputError(f"{csv_path}: row {int(np.flatnonzero(frame['file'].isna())[0]) + 2}: empty file name")
    age = _ages(frame, "age", csv_path)
    lo = _ages(frame, "age_lo", csv_path)
    hi = _ages(frame, "age_hi", csv_path)
    lo = np.where(np.isnan(age), lo, age)
    hi = np.where(np.isnan(age), np.where(np.isnan(lo), math.nan, np.where(np.isnan(hi), math.inf, hi)), age)
    if (hi < lo).any():
        row = int(np.flatnonzero(hi < lo)[0])
        raise InputError(f"{csv_path}: row {row + 2}: age_hi {hi[row]:g} is below age_lo {lo[row]:g}")
    folder = csv_path.parent
    paths = [str(p if Path(p).is_absolute() else folder / p) for p in frame["file"].astype(str)]
    duplicate_rows(frame["file"].astype(str).tolist(), paths, csv_path)
    return pd.DataFrame({
        "file": frame["file"].astype(str),
        "path": paths,
        "age": age, "age_lo": lo, "age_hi": hi,
        "gender": class_codes(frame.get("gender", pd.Series([None] * len(frame))), GENDERS, csv_path, "gender"),
        "race": class_codes(frame.get("race", pd.Series([None] * len(frame))), RACES, csv_path, "race"),
    }, columns=list(COLUMNS))
