"""The label space shared by data, model heads, reports and output rows.

Everything that names a class or an age bin imports it from here, so the order of the
softmax units, the columns of a confusion matrix and the strings written to a CSV can never
disagree.
"""

from __future__ import annotations

import math

import numpy as np

#: Gender classes in the order of the gender head's softmax units (UTKFace code = index).
GENDERS: tuple[str, ...] = ("male", "female")
#: Race classes in the order of the race head's softmax units (UTKFace code = index).
RACES: tuple[str, ...] = ("white", "black", "asian", "indian", "others")
#: Unit of every age value in the toolkit (labels, predictions, errors).
AGE_UNIT = "years"
#: UTKFace ages run from 1 to 116; predictions are clipped to this range.
AGE_RANGE: tuple[float, float] = (0.0, 116.0)
#: Default age-bin edges in years: [0,10), [10,20), ..., [60,80), [80, inf).
DEFAULT_AGE_BIN_EDGES: tuple[float, ...] = (0, 10, 20, 30, 40, 60, 80, math.inf)

#: Names of the model outputs, in the order they are reported.
TASKS: tuple[str, ...] = ("age", "gender", "race")


def age_bin_labels(edges: tuple[float, ...] | list[float] = DEFAULT_AGE_BIN_EDGES) -> list[str]:
    """Human-readable names of the bins defined by ``edges`` (e.g. ``"20-30"``, ``"80+"``)."""
    names = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        names.append(f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}")
    return names


def age_to_bin(
    ages: np.ndarray | list[float], edges: tuple[float, ...] | list[float] = DEFAULT_AGE_BIN_EDGES
) -> np.ndarray:
    """Index of the age bin of each age (years); shape of ``ages``, dtype int.

    Bins are half-open ``[lo, hi)``; ages below the first edge fall in bin 0 and ages at or
    beyond the last finite edge fall in the last bin.
    """
    inner = np.asarray(list(edges[1:-1]), dtype=float)
    return np.digitize(np.asarray(ages, dtype=float), inner, right=False).astype(int)
