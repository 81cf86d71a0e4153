"""A model folder's ``split.csv``: which image was in the train, val and test split.

Training writes it (``utkface.write_split_csv``: ``image,split,copies``, one row per image,
sorted by name) and copies it into the model folder, where ``evaluate``, ``calibrate``,
``ensemble`` and continued training read it (here) to keep test faces out. A damaged copy
would silently score other images, so :func:`read_split` checks it: a readable CSV with an
``image`` and a ``split`` column, whole rows (a file cut mid-row has no final line end), known
split names, each image once and, where the model recorded it (:func:`split_record`, in
``train_summary.json`` as ``split_csv``), as many rows as when it was trained (a file cut at a
row's end). Moving images between splits is left to the user (the ensemble compares members).
Any problem is one :class:`faceattr.errors.ModelError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from faceattr.errors import ModelError

SPLIT_FILE = "split.csv"
SPLIT_NAMES = ("train", "val", "test")
#: The key of ``train_summary.json`` that records the split file (:func:`split_record`).
RECORD_KEY = "split_csv"
SUMMARY_FILE = "train_summary.json"
_FIX = "copy it again from the training run folder"


def split_record(path: Path) -> dict[str, int]:
    """What to record of a ``split.csv`` to know it was cut short: ``rows``, the images listed."""
    return {"rows": max(0, Path(path).read_bytes().count(b"\n") - 1)}  # whole lines, less the header


def _recorded(model_dir: Path) -> dict | None:
    try:
        summary = json.loads((model_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = summary.get(RECORD_KEY) if isinstance(summary, dict) else None
    return record if isinstance(record, dict) else None


def read_split(model_dir: Path, split: str | None = None) -> pd.DataFrame:
    """The checked ``split.csv`` of ``model_dir`` as a frame (``image``, ``split`` and any other
    columns, as strings), or only its rows of ``split`` (train | val | test). Raises
    ``ModelError`` naming the file for a missing, unreadable, damaged or cut-short file."""
    path = Path(model_dir) / SPLIT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; without it the model's test images are unknown") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not data.strip():
        raise ModelError(f"{path}: empty; {_FIX}")
    if not data.endswith(b"\n"):
        raise ModelError(f"{path}: cut short (its last row is incomplete); {_FIX}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}); {_FIX}") from None
    missing = [c for c in ("image", "split") if c not in frame.columns]
    if missing:
        raise ModelError(f"{path}: no {' or '.join(repr(c) for c in missing)} column (columns: "
                         f"{', '.join(map(str, frame.columns)) or 'none'}); {_FIX}")
    if frame.empty:
        raise ModelError(f"{path}: lists no images; {_FIX}")
    for column in ("image", "split"):
        empty = frame[column].isna()
        if empty.any():
            raise ModelError(f"{path}: row {int(empty.to_numpy().argmax()) + 2}: empty {column}; {_FIX}")
    unknown = ~frame["split"].isin(SPLIT_NAMES)
    if unknown.any():
        row = int(unknown.to_numpy().argmax())
        raise ModelError(f"{path}: row {row + 2}: split {frame['split'].iloc[row]!r} is not one of "
                         f"{', '.join(SPLIT_NAMES)}; {_FIX}")
    repeated = frame["image"].duplicated()
    if repeated.any():
        row = int(repeated.to_numpy().argmax())
        raise ModelError(f"{path}: row {row + 2}: {frame['image'].iloc[row]} is listed twice; {_FIX}")
    record = _recorded(Path(model_dir))
    if record is not None and isinstance(record.get("rows"), int) and len(frame) != record["rows"]:
        raise ModelError(f"{path}: lists {len(frame)} images, but the model was trained with {record['rows']} "
                         f"({SUMMARY_FILE}); cut short or edited; {_FIX}")
    return frame if split is None else frame[frame["split"] == split]
