"""Evaluation plots: confusion heatmaps, training curves, age errors and a grid of test faces.

Figures are drawn on matplotlib's Agg canvas without ``pyplot``, so plotting never opens a
window, never changes the global backend (safe inside notebooks and sweep jobs) and leaves
no figure open. Each ``plot_*`` function takes an output *stem* (a path without suffix) and
writes ``<stem>.png`` plus ``<stem>.svg`` when "svg" is in ``formats`` (``faceattr.figures.save_figure``);
it returns the paths.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from faceattr.evaluation.metrics import age_by_bin_frame, class_names, confusion_counts, predicted_classes
from faceattr.figures import save_figure
from faceattr.labels import AGE_UNIT, DEFAULT_AGE_BIN_EDGES, GENDERS, RACES

log = logging.getLogger(__name__)

#: Font sizes and styling used by every evaluation figure.
RC: dict[str, object] = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 15,
    "figure.titleweight": "bold",
    "svg.fonttype": "none",  # text stays text in SVGs
}


@contextlib.contextmanager
def plot_style() -> Iterator[None]:
    """Seaborn's white grid with readable fonts, for the duration of the block."""
    with sns.axes_style("whitegrid"), mpl.rc_context(RC):
        yield


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure on an Agg canvas (no pyplot state, nothing to close)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_confusion(task: str, y_true: np.ndarray, y_pred: np.ndarray, stem: Path,
                   formats: Sequence[str] = ("png",), dpi: int = 120, where: str = "the test split") -> list[Path]:
    """Confusion heatmap of ``task`` ("gender" or "race").

    ``y_true``: (N,) class indices; ``y_pred``: (N, C) probabilities or (N,) indices. Cells
    show the count and, in brackets, the share of the true class (row-normalised, which is
    also what the colour encodes, so small classes stay readable). ``where``: what the faces
    are, for the title.
    """
    names = list(class_names(task))
    counts = confusion_counts(task, y_true, y_pred)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts, dtype=float), where=totals > 0)
    annot = np.array([[f"{c}\n({r:.0%})" for c, r in zip(crow, rrow, strict=True)]
                      for crow, rrow in zip(counts, rates, strict=True)])
    n = int(counts.sum())
    acc = float(np.trace(counts) / n) if n else math.nan
    side = 2.2 + 1.15 * len(names)
    with plot_style():
        fig = new_figure((side + 3.0, side + 0.5))
        ax = fig.add_subplot()
        sns.heatmap(rates, annot=annot, fmt="", cmap="Blues", vmin=0, vmax=1, square=True,
                    xticklabels=names, yticklabels=[f"{nm} (n={t})" for nm, t in zip(names, totals[:, 0],
                                                                                       strict=True)],
                    cbar_kws={"label": "share of the true class", "format": mpl.ticker.PercentFormatter(1.0)},
                    annot_kws={"fontsize": 11}, linewidths=0.5, linecolor="white", ax=ax)
        ax.set_xlabel(f"Predicted {task}")
        ax.set_ylabel(f"True {task}")
        ax.tick_params(axis="y", rotation=0)
        ax.tick_params(axis="x", rotation=0 if len(names) <= 3 else 30)
        ax.set_title(f"{task.capitalize()} confusion on {where}\n(n={n}, accuracy {acc:.1%})")
        return save_figure(fig, stem, formats, dpi)


#: Panels of the training-curve figure: (title, y label, candidate metric columns).
CURVE_PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Total loss", "loss", ("loss",)),
    ("Age", f"MAE ({AGE_UNIT})", ("age_mae", "age_mean_absolute_error", "age_loss")),
    ("Gender", "accuracy", ("gender_accuracy", "gender_sparse_categorical_accuracy", "gender_loss")),
    ("Race", "accuracy", ("race_accuracy", "race_sparse_categorical_accuracy", "race_loss")),
)


def read_history(history: Path | pd.DataFrame) -> pd.DataFrame:
    """A Keras ``CSVLogger`` history as a frame with a 1-based ``epoch`` column."""
    df = history.copy() if isinstance(history, pd.DataFrame) else pd.read_csv(history)
    if "epoch" in df and df["epoch"].is_monotonic_increasing and not df["epoch"].duplicated().any():
        df["epoch"] = df["epoch"].astype(int) + 1
    else:  # appended runs restart at 0: number the rows instead
        df["epoch"] = np.arange(1, len(df) + 1)
    return df


def plot_training_curves(history: Path | pd.DataFrame, stem: Path, formats: Sequence[str] = ("png",),
                         dpi: int = 120) -> list[Path]:
    """Train vs validation curves: total loss and each task's metric (plus learning rate).

    ``history``: a Keras ``CSVLogger`` CSV (columns like ``loss``, ``val_loss``, ``age_mae``,
    ``val_age_mae``, ``gender_accuracy``, ...) or its frame. Missing columns are skipped (a
    task without its metric falls back to its loss); returns [] when nothing can be plotted.
    The epoch of the lowest ``val_loss`` is marked.
    """
    df = read_history(history)
    panels = []
    for title, ylabel, candidates in CURVE_PANELS:
        col = next((c for c in candidates if c in df or f"val_{c}" in df), None)
        if col is not None:
            panels.append((title, ylabel if not col.endswith("loss") or title == "Total loss" else "loss", col))
    lr_col = next((c for c in ("learning_rate", "lr") if c in df), None)
    if not panels:
        log.warning("history has none of the expected columns (%s); no training curves", ", ".join(df.columns))
        return []
    best = int(df.loc[df["val_loss"].idxmin(), "epoch"]) if "val_loss" in df and df["val_loss"].notna().any() \
        else None
    n_panels = len(panels) + (lr_col is not None)
    ncols = min(n_panels, 3 if n_panels in (3, 5, 6) else 2)
    nrows = math.ceil(n_panels / ncols)
    with plot_style():
        fig = new_figure((5.2 * ncols, 3.8 * nrows))
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (title, ylabel, col) in zip(axes, panels, strict=False):
            for name, label, style in ((col, "train", "-"), (f"val_{col}", "validation", "--")):
                if name in df:
                    ax.plot(df["epoch"], df[name], style, marker="o", markersize=3, label=label)
            if best is not None:
                ax.axvline(best, color="grey", linestyle=":", linewidth=1.2, label=f"best val_loss (epoch {best})")
            ax.set_title(title if col == "loss" else f"{title} ({col})")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            if "accuracy" in col:
                ax.yaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0, decimals=0))
            ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
            ax.legend(loc="best")
        used = len(panels)
        if lr_col is not None:
            ax = axes[used]
            ax.plot(df["epoch"], df[lr_col], marker="o", markersize=3, color="tab:purple")
            ax.set_yscale("log")
            ax.set_title("Learning rate")
            ax.set_xlabel("epoch")
            ax.set_ylabel("learning rate")
            ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
            used += 1
        for ax in axes[used:]:
            ax.set_visible(False)
        fig.suptitle(f"Training curves ({len(df)} epochs)")
        return save_figure(fig, stem, formats, dpi)


def plot_age(y_true: np.ndarray, y_pred: np.ndarray, stem: Path, edges: Sequence[float] = DEFAULT_AGE_BIN_EDGES,
             formats: Sequence[str] = ("png",), dpi: int = 120) -> list[Path]:
    """Age predictions: true vs predicted scatter with the identity line, and MAE per age bin.

    ``y_true``, ``y_pred``: (N,) years; ``edges``: age-bin edges in years.
    """
    t = np.asarray(y_true, dtype=float).reshape(-1)
    p = np.asarray(y_pred, dtype=float).reshape(-1)
    by_bin = age_by_bin_frame(t, p, edges)
    mae = float(np.mean(np.abs(p - t))) if len(t) else math.nan
    with plot_style():
        fig = new_figure((12.5, 5.2))
        ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.15])
        ax1.scatter(t, p, s=10, alpha=0.35 if len(t) > 500 else 0.6, edgecolors="none")
        hi = max(float(np.nanmax(t)) if len(t) else 1.0, float(np.nanmax(p)) if len(p) else 1.0) * 1.05
        ax1.plot([0, hi], [0, hi], color="black", linestyle="--", linewidth=1.2, label="perfect (predicted = true)")
        ax1.fill_between([0, hi], [-10, hi - 10], [10, hi + 10], color="grey", alpha=0.12, label="±10 years")
        ax1.set_xlim(0, hi)
        ax1.set_ylim(0, hi)
        ax1.set_aspect("equal")
        ax1.set_xlabel(f"true age ({AGE_UNIT})")
        ax1.set_ylabel(f"predicted age ({AGE_UNIT})")
        ax1.set_title(f"True vs predicted age (n={len(t)}, MAE {mae:.1f} y)")
        ax1.legend(loc="upper left")
        colors = sns.color_palette("rocket_r", n_colors=max(len(by_bin), 3))[: len(by_bin)]
        bars = ax2.bar(by_bin["bin"], by_bin["mae"].fillna(0), color=colors)
        for bar, (_, row) in zip(bars, by_bin.iterrows(), strict=True):
            text = f"{row['mae']:.1f}\nn={row['n']}" if row["n"] else "n=0"
            ax2.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                         fontsize=9, xytext=(0, 2), textcoords="offset points")
        ax2.axhline(mae, color="black", linestyle="--", linewidth=1.2, label=f"overall MAE {mae:.1f} y")
        ax2.set_ylim(0, max(float(np.nanmax(by_bin["mae"].fillna(0))), mae if mae == mae else 0, 1.0) * 1.25)
        ax2.set_xlabel(f"true age bin ({AGE_UNIT})")
        ax2.set_ylabel(f"mean absolute error ({AGE_UNIT})")
        ax2.set_title("Age error by true age")
        ax2.legend(loc="upper left")
        return save_figure(fig, stem, formats, dpi)


def plot_age_groups(pred: np.ndarray, lo: np.ndarray, hi: np.ndarray, stem: Path,
                    formats: Sequence[str] = ("png",), dpi: int = 120) -> list[Path]:
    """Predicted ages (years) per true age group: a box per group with its true interval shaded,
    so a pull toward the middle shows as boxes above the young groups and below the old ones.

    ``pred``, ``lo``, ``hi``: (N,) years; ``hi`` may be inf (an open group such as 70+).
    """
    keys = sorted({(a, b) for a, b in zip(lo, hi, strict=True)})
    data = [pred[(lo == a) & (hi == b)] for a, b in keys]
    names = [f"{a:g}+" if math.isinf(b) else f"{a:g}-{b:g}" for a, b in keys]
    inside = float(np.mean([(a <= p <= b) for p, a, b in zip(pred, lo, hi, strict=True)])) if len(pred) else math.nan
    with plot_style():
        fig = new_figure((max(6.0, 1.0 + 0.9 * len(keys)), 5.0))
        ax = fig.add_subplot()
        top = max(float(np.nanmax(pred)) if len(pred) else 1.0, max((b for _, b in keys if not math.isinf(b)),
                                                                   default=1.0)) * 1.08
        for i, (a, b) in enumerate(keys):
            ax.fill_between([i + 0.55, i + 1.45], a, top if math.isinf(b) else b + 1, color="green", alpha=0.15,
                            label="true group" if i == 0 else None)
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(keys) + 1), [f"{nm}\nn={len(d)}" for nm, d in zip(names, data, strict=True)])
        ax.set_ylim(0, top)
        ax.set_xlabel(f"true age group ({AGE_UNIT})")
        ax.set_ylabel(f"predicted age ({AGE_UNIT})")
        ax.set_title(f"Predicted age by true age group (n={len(pred)}, {inside:.0%} inside their group)")
        ax.legend(loc="upper left")
        return save_figure(fig, stem, formats, dpi)


def _load_rgb(path: object, size: int = 128) -> np.ndarray | None:
    import cv2  # deferred: OpenCV, only to read the faces of the grid

    if not isinstance(path, str | Path) or not str(path):
        return None
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def plot_face_tiles(images: Sequence[np.ndarray | None], titles: Sequence[str], right: Sequence[bool], stem: Path,
                    suptitle: str, formats: Sequence[str] = ("png",), dpi: int = 120) -> list[Path]:
    """A grid of face pictures, each (H, W, 3) uint8 RGB (None: a grey tile), titled in green where
    ``right`` and red otherwise. Returns the written files (none when there is no picture)."""
    n = len(images)
    if n == 0:
        return []
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    with plot_style(), mpl.rc_context({"axes.titlesize": 9.5}):
        fig = new_figure((2.45 * ncols, 2.95 * nrows + 0.5))
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, img, title, ok in zip(axes, images, titles, right, strict=False):
            ax.imshow(img if img is not None else np.full((128, 128, 3), 200, dtype=np.uint8))
            ax.set_title(title, color="tab:green" if ok else "tab:red")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        for ax in axes[n:]:
            ax.set_visible(False)
        fig.suptitle(suptitle)
        return save_figure(fig, stem, formats, dpi)


def plot_faces_grid(frame: pd.DataFrame, predictions: Mapping[str, np.ndarray], stem: Path, n: int = 16,
                    formats: Sequence[str] = ("png",), dpi: int = 120, seed: int = 0) -> list[Path]:
    """A grid of ``n`` test faces (a fixed random sample) with true and predicted labels.

    ``frame``: test rows with ``path``, ``age``, ``gender``, ``race``; ``predictions`` as in
    ``metrics`` (row-aligned with ``frame``). A title is green when gender and race are right
    and the age is within 10 years, red otherwise. Unreadable images show as grey tiles.
    """
    frame = frame.reset_index(drop=True)
    n = max(0, min(int(n), len(frame)))
    if n == 0:
        log.warning("no test faces to show; faces grid skipped")
        return []
    rows = np.sort(np.random.default_rng(seed).choice(len(frame), size=n, replace=False))
    age_p = np.asarray(predictions["age"], dtype=float).reshape(-1)
    g_prob = np.asarray(predictions["gender"])
    r_prob = np.asarray(predictions["race"])
    g_pred, r_pred = predicted_classes(g_prob), predicted_classes(r_prob)
    images, titles, right = [], [], []
    for i in rows:
        rec = frame.iloc[i]
        images.append(_load_rgb(rec.get("path")))
        ag, gg, rg = float(rec["age"]), int(rec["gender"]), int(rec["race"])
        gp, rp = int(g_pred[i]), int(r_pred[i])
        conf = (f" {g_prob[i, gp]:.0%}" if g_prob.ndim == 2 else "", f" {r_prob[i, rp]:.0%}" if r_prob.ndim == 2
                else "")
        right.append(gp == gg and rp == rg and abs(age_p[i] - ag) <= 10)
        titles.append(f"true: {ag:.0f} y, {GENDERS[gg]}, {RACES[rg]}\n"
                      f"pred: {age_p[i]:.0f} y, {GENDERS[gp]}{conf[0]}, {RACES[rp]}{conf[1]}")
    missing = sum(img is None for img in images)
    if missing:
        log.warning("%d of %d grid images could not be read (grey tiles)", missing, n)
    return plot_face_tiles(images, titles, right, stem,
                           f"{n} scored faces: true vs predicted (green: all right, age within 10 y)", formats, dpi)
