"""The predictions an ``evaluate`` run saved, read back per source (``predictions.csv``).

An ``evaluate`` run folder holds one ``predictions.csv`` per source (``sources/<name>/``), or
its own as the one source :data:`ALL_SOURCES`, in either of the two formats an evaluation
writes: UTKFace-style (``report.predictions_frame``: exact ages, class names) or labelled photos
(``photos.write_photo_evaluation``: age groups, class codes, missing labels). Both are read into
one :class:`SourceTable` per source, truths and predictions side by side, so members evaluated
alone can be combined afterwards (``ensemble_weights``). A file that is not such a table is one
ConfigError line naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from faceattr.data.labels_csv import class_codes
from faceattr.errors import ConfigError
from faceattr.labels import GENDERS, RACES

#: What an ``evaluate`` run writes per source, and where a run of several sources puts each.
PREDICTIONS = "predictions.csv"
SOURCES_DIR = "sources"
#: The name of the one source of a run folder without ``sources/`` (a run on one source).
ALL_SOURCES = "all"
RACE_COLUMNS = tuple(f"p_race_{name}" for name in RACES)


@dataclass(frozen=True)
class SourceTable:
    """One source's faces as one member's ``evaluate`` run scored them, sorted by ``keys``.

    Truths: ``age_lo``/``age_hi`` (N,) years, an exact age being [age, age], ``age_hi`` inf for
    an open-ended group, both NaN without an age label; ``gender``/``race`` (N,) class indices
    of ``labels.GENDERS``/``labels.RACES``, -1 where not labelled. Predictions: ``age`` (N,)
    years, ``p_female`` (N,) probability, ``p_race`` (N, 5) probabilities in ``RACES`` order.
    ``keys`` (N,) are the ``image`` or ``file`` names; ``path`` the CSV they came from.
    """

    path: Path
    keys: np.ndarray
    age_lo: np.ndarray
    age_hi: np.ndarray
    gender: np.ndarray
    race: np.ndarray
    age: np.ndarray
    p_female: np.ndarray
    p_race: np.ndarray


@dataclass(frozen=True)
class Evaluation:
    """One member's ``evaluate`` run folder: its sources by name, each a :class:`SourceTable`."""

    folder: Path
    sources: dict[str, SourceTable]



def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"image": str, "file": str})
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # pandas' parser errors are ValueErrors
        raise ConfigError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None


def _require(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ConfigError(f"{path}: no column {', '.join(missing)} (not the predictions.csv of an `evaluate` run?)")


def _numbers(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """A column as floats (NaN where empty); a cell that is not a number is refused."""
    if column not in frame:
        return np.full(len(frame), math.nan)
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
    bad = np.flatnonzero(frame[column].notna().to_numpy() & np.isnan(values))
    if len(bad):
        raise ConfigError(f"{path}: row {bad[0] + 2}: {column} {frame[column].iloc[bad[0]]!r} is not a number")
    return values


def _classes(frame: pd.DataFrame, column: str, names: tuple[str, ...], path: Path) -> np.ndarray:
    """Class names or codes -> indices into ``names`` (N,) int; -1 where empty or -1 (no label)."""
    values = frame.get(column, pd.Series([None] * len(frame)))
    unlabelled = values.astype(str).str.strip().isin(("-1", "-1.0"))
    return class_codes(values.mask(unlabelled), names, path, column)


def _table(path: Path, keys: pd.Series, **columns: np.ndarray) -> SourceTable:
    """A :class:`SourceTable` with its rows sorted by key; a key listed twice is refused."""
    keys_array = keys.astype(str).to_numpy()
    order = np.argsort(keys_array, kind="stable")
    keys_array = keys_array[order]
    twice = np.flatnonzero(keys_array[1:] == keys_array[:-1])
    if len(twice):
        raise ConfigError(f"{path}: {keys_array[twice[0]]!r} is listed twice")
    return SourceTable(path=path, keys=keys_array, **{name: values[order] for name, values in columns.items()})


def _p_female(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """P(female) (N,): its own column, or from the predicted gender and its probability."""
    if "p_gender_female" in frame:
        return _numbers(frame, "p_gender_female", path)
    _require(frame, ("gender_pred", "gender_confidence"), path)
    female = _classes(frame, "gender_pred", GENDERS, path) == GENDERS.index("female")
    confidence = _numbers(frame, "gender_confidence", path)
    return np.where(female, confidence, 1.0 - confidence)


def utkface_predictions(frame: pd.DataFrame, path: Path) -> SourceTable:
    """A UTKFace-style ``predictions.csv`` (``report.predictions_frame``: ``image``, ``age_true``,
    ``age_pred``, ``gender_true``/``race_true`` class names, ``p_gender_*``, ``p_race_*``)."""
    _require(frame, ("image", "age_true", "age_pred", "gender_true", "race_true", *RACE_COLUMNS), path)
    age = _numbers(frame, "age_true", path)
    return _table(path, frame["image"], age_lo=age, age_hi=age.copy(),
                  gender=_classes(frame, "gender_true", GENDERS, path), race=_classes(frame, "race_true", RACES, path),
                  age=_numbers(frame, "age_pred", path), p_female=_p_female(frame, path),
                  p_race=np.column_stack([_numbers(frame, c, path) for c in RACE_COLUMNS]))


def photo_predictions(frame: pd.DataFrame, path: Path) -> SourceTable:
    """A labelled-photo ``predictions.csv`` (``photos.write_photo_evaluation``: ``file``, ``age`` or
    ``age_lo``/``age_hi`` (empty or inf: open-ended), ``gender``/``race`` codes (empty or -1: no
    label), ``age_pred``, ``gender_pred`` with ``gender_confidence``, ``p_race_*``). Photos where
    no face was found (``found`` false) carry no prediction and are left out."""
    _require(frame, ("file", "age_pred", "gender_pred", "gender_confidence", *RACE_COLUMNS), path)
    if "found" in frame:
        found = frame["found"].astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))
        frame = frame[found.to_numpy()].reset_index(drop=True)
    exact, lo, hi = (_numbers(frame, c, path) for c in ("age", "age_lo", "age_hi"))
    lo = np.where(np.isnan(exact), lo, exact)
    # An exact age is the interval [age, age]; a group without an upper end is open (70+).
    hi = np.where(~np.isnan(exact), exact, np.where(np.isnan(lo), math.nan, np.where(np.isnan(hi), math.inf, hi)))
    return _table(path, frame["file"], age_lo=lo, age_hi=hi,
                  gender=_classes(frame, "gender", GENDERS, path), race=_classes(frame, "race", RACES, path),
                  age=_numbers(frame, "age_pred", path), p_female=_p_female(frame, path),
                  p_race=np.column_stack([_numbers(frame, c, path) for c in RACE_COLUMNS]))


def read_predictions(path: str | Path) -> SourceTable:
    """One ``predictions.csv`` of an ``evaluate`` run, in whichever format it was written."""
    path = Path(path)
    frame = _read_csv(path)
    if "age_true" in frame:
        table = utkface_predictions(frame, path)
    elif "file" in frame:
        table = photo_predictions(frame, path)
    else:
        raise ConfigError(f"{path}: neither an `image, age_true, ...` nor a `file, age, ...` predictions table")
    if np.isnan(table.age).any() or np.isnan(table.p_female).any() or np.isnan(table.p_race).any():
        raise ConfigError(f"{path}: a face without a prediction (empty age_pred or probabilities)")
    return table


def source_files(folder: str | Path) -> dict[str, Path]:
    """The ``predictions.csv`` of each source of an ``evaluate`` run folder, by source name: those
    under ``sources/<name>/``, or the folder's own as the one source :data:`ALL_SOURCES`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder (give the run folders of `evaluate`)")
    sources = folder / SOURCES_DIR
    found = {p.name: p / PREDICTIONS for p in sorted(sources.iterdir()) if (p / PREDICTIONS).is_file()} \
        if sources.is_dir() else {}
    if found:
        return found
    if not (folder / PREDICTIONS).is_file():
        raise ConfigError(f"{folder}: no {PREDICTIONS} (not the run folder of an `evaluate`?)")
    return {ALL_SOURCES: folder / PREDICTIONS}


def read_evaluation(folder: str | Path) -> Evaluation:
    """A member's ``evaluate`` run folder read into one :class:`SourceTable` per source."""
    return Evaluation(Path(folder), {name: read_predictions(path) for name, path in source_files(folder).items()})


def check_matching(evaluations: Sequence[Evaluation]) -> None:
    """Refuse members that were not evaluated on the same faces: the same sources, each with the
    same keys and the same labels (ConfigError naming the folder and the first difference)."""
    first = evaluations[0]
    for other in evaluations[1:]:
        if list(other.sources) != list(first.sources):
            raise ConfigError(f"{other.folder}: sources {', '.join(other.sources)} differ from {first.folder}'s "
                              f"({', '.join(first.sources)}); evaluate every member on one data and split")
        for name, table in other.sources.items():
            base = first.sources[name]
            if len(table.keys) != len(base.keys) or (table.keys != base.keys).any():
                extra = sorted(set(table.keys) ^ set(base.keys))
                raise ConfigError(f"{other.folder}: source {name}: {len(table.keys)} faces, {first.folder} has "
                                  f"{len(base.keys)}; the rows differ (e.g. {extra[0] if extra else '-'!r})")
            same = [np.array_equal(getattr(table, c), getattr(base, c), equal_nan=True)
                    for c in ("age_lo", "age_hi", "gender", "race")]
            if not all(same):
                raise ConfigError(f"{other.folder}: source {name}: the labels differ from {first.folder}'s; "
                                  "evaluate every member on one data and split")
