"""Dataset statistics: plots of the label distributions and ``data_summary.json``.

Each plot has two panels: the images in use (deduplicated, all splits) on the left and the
training split as the model sees it after rebalancing on the right (counting oversampled
copies, or summing sample weights for ``rebalance=weights``). ``python src/main.py stats``
writes them without training; ``train`` writes them into ``<run dir>/statistics``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from faceattr import writes
from faceattr.data.labelled import age_midpoint
from faceattr.data.prepare import PreparedData
from faceattr.data.utkface import SPLITS
from faceattr.figures import save_figure
from faceattr.labels import AGE_RANGE, GENDERS, RACES, age_bin_labels

log = logging.getLogger(__name__)

#: Base names of the plots written (one file per format each).
PLOTS: tuple[str, ...] = ("age_histogram", "gender_distribution", "race_distribution", "race_by_age_bin")
_STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "figure.titlesize": 13}


def _panels(prepared: PreparedData) -> list[tuple[str, pd.DataFrame, np.ndarray, str]]:
    """(title, rows, per-row count, y label) for the two panels of every plot."""
    frame = prepared.frame
    train = frame[frame["split"] == "train"]
    method = str(prepared.rebalance["name"])
    if method == "weights":
        counts, unit = (train["copies"] * train["weight"]).to_numpy(float), "sum of sample weights"
    else:
        counts, unit = train["copies"].to_numpy(float), "images per epoch (with copies)"
    return [
        (f"All images in use ({len(frame)}, deduplicated)", frame, np.ones(len(frame)), "images"),
        (f"Training split, rebalance={method} ({int(train['copies'].sum())} per epoch)", train, counts, unit),
    ]


def _bars(ax: plt.Axes, names: Sequence[str], values: np.ndarray, color: str) -> None:
    bars = ax.bar(names, values, color=color)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=2, fontsize=10)
    ax.margins(y=0.12)


def _save(fig: plt.Figure, out_dir: Path, name: str, formats: Sequence[str], dpi: int) -> list[str]:
    paths = save_figure(fig, out_dir / name, formats, dpi, bbox_inches="tight")
    plt.close(fig)
    return [str(path) for path in paths]


def _plot_all(prepared: PreparedData, out_dir: Path, formats: Sequence[str], dpi: int) -> list[str]:
    panels = _panels(prepared)
    edges = prepared.age_bin_edges
    bin_names = age_bin_labels(edges)
    files: list[str] = []

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharex=True, layout="constrained")
    top = int(AGE_RANGE[1]) + 1
    for ax, (title, rows, counts, unit) in zip(axes, panels, strict=True):
        ages = plotted_ages(rows)
        ax.hist(ages, bins=np.arange(0, top + 1), weights=counts, color="tab:blue", label=unit)
        if unit != "images":
            ax.hist(ages, bins=np.arange(0, top + 1), histtype="step", color="black", linewidth=0.8,
                    label="before rebalancing")
            ax.legend(loc="upper right", fontsize=9)
        for edge in edges[1:-1]:
            ax.axvline(edge, color="grey", linestyle=":", linewidth=0.8)
        ax.set(title=title, xlabel="age (years; dotted lines: age-bin edges)", ylabel=unit, xlim=(0, top))
    groups = "; age groups at their midpoint" if frame_has_groups(panels[0][1]) else ""
    fig.suptitle(f"Age distribution (1-year bins{groups})")
    files += _save(fig, out_dir, "age_histogram", formats, dpi)

    for task, names, color in (("gender", GENDERS, "tab:orange"), ("race", RACES, "tab:green")):
        fig, axes = plt.subplots(1, 2, figsize=(11 if task == "race" else 9, 4.2), layout="constrained")
        for ax, (title, rows, counts, unit) in zip(axes, panels, strict=True):
            labelled = rows[task].to_numpy(int) >= 0  # faces without this label are not counted
            values = np.bincount(rows[task].to_numpy(int)[labelled], weights=counts[labelled], minlength=len(names))
            _bars(ax, names, values, color)
            ax.set(title=title, xlabel=task, ylabel=unit)
        fig.suptitle(f"{task.capitalize()} distribution")
        files += _save(fig, out_dir, f"{task}_distribution", formats, dpi)

    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), layout="constrained")
    for ax, (title, rows, counts, unit) in zip(axes, panels, strict=True):
        table = np.zeros((len(RACES), len(bin_names)))
        labelled = (rows["race"].to_numpy(int) >= 0) & rows["age_lo"].notna().to_numpy() if "age_lo" in rows \
            else rows["race"].to_numpy(int) >= 0
        np.add.at(table, (rows["race"].to_numpy(int)[labelled], rows["age_bin"].to_numpy(int)[labelled]),
                  counts[labelled])
        im = ax.imshow(table, cmap="Blues", aspect="auto")
        threshold = table.max() / 2 if table.size else 0
        for (r, b), v in np.ndenumerate(table):
            ax.text(b, r, f"{v:,.0f}", ha="center", va="center", fontsize=9,
                    color="white" if v > threshold else "black")
        ax.set_xticks(range(len(bin_names)), bin_names)
        ax.set_yticks(range(len(RACES)), RACES)
        ax.set(title=title, xlabel="age bin (years)", ylabel="race")
        fig.colorbar(im, ax=ax, label=unit, fraction=0.046, pad=0.03)
    fig.suptitle("Race by age bin")
    files += _save(fig, out_dir, "race_by_age_bin", formats, dpi)
    return files


def plotted_ages(rows: pd.DataFrame) -> np.ndarray:
    """Each row's age in years for the histogram: the exact age, or its group's midpoint
    (``labelled.age_midpoint``); NaN (not drawn) without an age."""
    ages = rows["age"].to_numpy(float)
    if "age_lo" in rows:
        ages = np.where(np.isnan(ages), age_midpoint(rows["age_lo"], rows["age_hi"]), ages)
    return ages


def frame_has_groups(rows: pd.DataFrame) -> bool:
    return "age_lo" in rows and bool((rows["age"].isna() & rows["age_lo"].notna()).any())


def _age_bin_counts(frame: pd.DataFrame, values: pd.Series, names: list[str]) -> dict[str, float]:
    sums = values.groupby(frame["age_bin"]).sum()
    return {name: round(float(sums.get(i, 0)), 3) for i, name in enumerate(names)}


def write_statistics(prepared: PreparedData, out_dir: Path, formats: Sequence[str] = ("png",),
                     dpi: int = 120, plots: bool = True) -> dict[str, Any]:
    """Write the plots (:data:`PLOTS`, one file per format; none with ``plots=False``) and
    ``data_summary.json``.

    Returns the summary as written, with ``"plots"`` listing the files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = prepared.frame
    bin_names = age_bin_labels(prepared.age_bin_edges)
    summary = dict(prepared.summary)
    summary["age_bins"] = bin_names
    ones = pd.Series(1, index=frame.index)
    summary["split_age_bins"] = {s: _age_bin_counts(frame[frame.split == s], ones[frame.split == s], bin_names)
                                 for s in SPLITS}
    train = frame[frame.split == "train"]
    summary["train_age_bins_after_rebalancing"] = _age_bin_counts(train, train["copies"] * train["weight"], bin_names)
    summary["plots"] = []
    if plots:
        with plt.rc_context(_STYLE):
            summary["plots"] = _plot_all(prepared, out_dir, tuple(formats), int(dpi))
    writes.write_text(out_dir / "data_summary.json", json.dumps(summary, indent=2, default=str))
    log.info("dataset statistics written to %s", out_dir)
    return summary

