"""Extra labelled face chips for training (``data.extra_labels``), e.g. the web app's corrections.

The chips are listed in a ``labels.csv`` (``data.labels_csv``'s format: ``file``, ``age``,
``gender``, ``race``) and are appended to the **training split only**, after the split and the
rebalancing, so they can never reach validation or test. Every row needs all three labels
(a chip without one would train that head on nothing).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from faceattr.data.labels_csv import labels_path, read_labels
from faceattr.errors import DataError
from faceattr.labels import age_to_bin

#: Prefix of an extra chip's ``image`` name, so it never collides with a dataset file name.
EXTRA_PREFIX = "extra/"


def extra_training_rows(path: str | Path, age_bin_edges: list[float], copies: int = 1) -> pd.DataFrame:
    """The chips of the labels file ``path`` as training rows of a prepared frame.

    Columns: ``image`` (``extra/<file>``), ``path``, ``age`` (years, also as ``age_lo``/``age_hi``),
    ``gender``, ``race``, ``age_bin``, ``sha1`` (of the file bytes), ``source`` ("extra_labels"),
    ``split`` ("train"), ``copies`` (``copies``)
    and ``weight`` (1.0). Raises ``InputError``/``DataError`` naming the file and row.
    """
    csv_path = labels_path(path)
    labels = read_labels(csv_path)
    for i, row in enumerate(labels.itertuples(index=False)):
        where = f"{csv_path}: row {i + 2}"
        if math.isnan(row.age) or row.gender < 0 or row.race < 0:
            raise DataError(f"{where}: {row.file} needs an exact age, a gender and a race to be trained on")
        if not Path(row.path).is_file():
            raise DataError(f"{where}: {row.path}: no such image file")
    sha1 = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in labels["path"]]
    return pd.DataFrame({
        "image": [EXTRA_PREFIX + f for f in labels["file"]],
        "path": [str(Path(p).resolve()) for p in labels["path"]],
        "age": labels["age"].to_numpy(float),
        "age_lo": labels["age"].to_numpy(float),
        "age_hi": labels["age"].to_numpy(float),
        "gender": labels["gender"].to_numpy(int),
        "race": labels["race"].to_numpy(int),
        "age_bin": age_to_bin(labels["age"].to_numpy(float), age_bin_edges),
        "sha1": sha1,
        "source": "extra_labels",
        "split": "train",
        "copies": int(copies),
        "weight": 1.0,
    })


def append_extra(frame: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (a split, rebalanced frame) with the ``extra`` training rows at its end.

    Refuses an extra chip whose content is already in the frame (a dataset image relabelled
    into training could leak a val/test face).
    """
    clash = extra[extra["sha1"].isin(set(frame["sha1"]))]
    if len(clash):
        raise DataError(f"data.extra_labels: {clash['path'].iloc[0]} is byte-identical to an image of the dataset")
    columns = list(frame.columns)
    extra = extra.reindex(columns=columns)
    for column in columns:  # the dataset's own dtypes (ints stay ints)
        if frame[column].dtype != object and extra[column].notna().all():
            extra[column] = extra[column].astype(frame[column].dtype)
    out = pd.concat([frame, extra], ignore_index=True)
    out["copies"] = out["copies"].astype(np.int64)
    return out
