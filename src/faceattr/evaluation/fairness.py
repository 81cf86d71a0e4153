"""Fairness breakdown: every metric for every race x gender group of the test split.

A single accuracy hides who the model fails; this table and its heatmaps show, per group,
the age MAE (years), gender and race accuracy and how many test faces the number rests on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns

from faceattr.evaluation.metrics import predicted_classes
from faceattr.evaluation.plots import new_figure, plot_style
from faceattr.figures import save_figure
from faceattr.labels import GENDERS, RACES

log = logging.getLogger(__name__)

#: Groups with fewer test faces than this are flagged as noisy (in the plot and the log).
MIN_GROUP_SIZE = 20
#: Columns of ``fairness_frame``.
COLUMNS = ("race", "gender", "n", "share", "age_mae", "age_bias", "gender_accuracy", "race_accuracy")


def fairness_frame(y_true: Mapping[str, np.ndarray], y_pred: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Metrics per race x gender group (only groups present in ``y_true``).

    Inputs as in ``metrics.compute_metrics``. One row per group, in ``labels`` order (race,
    then gender). Columns: ``race``, ``gender`` (class names), ``n`` (test faces), ``share``
    (n / N), ``age_mae``, ``age_bias`` (years; bias = mean predicted - true), and
    ``gender_accuracy``, ``race_accuracy`` in [0, 1].
    """
    age_t = np.asarray(y_true["age"], dtype=float).reshape(-1)
    age_p = np.asarray(y_pred["age"], dtype=float).reshape(-1)
    g_t = np.asarray(y_true["gender"]).astype(int)
    r_t = np.asarray(y_true["race"]).astype(int)
    g_p = predicted_classes(y_pred["gender"])
    r_p = predicted_classes(y_pred["race"])
    total = len(age_t)
    rows = []
    for r, race in enumerate(RACES):
        for g, gender in enumerate(GENDERS):
            m = (r_t == r) & (g_t == g)
            if not m.any():
                continue
            err = age_p[m] - age_t[m]
            rows.append({"race": race, "gender": gender, "n": int(m.sum()), "share": float(m.sum() / total),
                         "age_mae": float(np.abs(err).mean()), "age_bias": float(err.mean()),
                         "gender_accuracy": float(np.mean(g_p[m] == g)), "race_accuracy": float(np.mean(r_p[m] == r))})
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    _log_extremes(df)
    return df


def _log_extremes(df: pd.DataFrame) -> None:
    solid = df[df["n"] >= MIN_GROUP_SIZE]
    if solid.empty:
        return
    worst_age = solid.loc[solid["age_mae"].idxmax()]
    worst_g = solid.loc[solid["gender_accuracy"].idxmin()]
    worst_r = solid.loc[solid["race_accuracy"].idxmin()]
    log.info("fairness (groups with n >= %d): worst age MAE %.1f y (%s %s), worst gender accuracy %.1f%% "
             "(%s %s), worst race accuracy %.1f%% (%s %s)", MIN_GROUP_SIZE,
             worst_age["age_mae"], worst_age["race"], worst_age["gender"],
             100 * worst_g["gender_accuracy"], worst_g["race"], worst_g["gender"],
             100 * worst_r["race_accuracy"], worst_r["race"], worst_r["gender"])


def _grid(df: pd.DataFrame, value: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(race x gender) table of ``value`` with an ``all`` row and column (n-weighted), and counts."""
    races = [r for r in RACES if r in set(df["race"])]
    genders = [g for g in GENDERS if g in set(df["gender"])]
    counts = df.pivot(index="race", columns="gender", values="n").reindex(index=races, columns=genders)
    vals = df.pivot(index="race", columns="gender", values=value).reindex(index=races, columns=genders)
    weighted = (vals * counts).fillna(0)
    c = counts.fillna(0)
    vals.loc[:, "all"] = weighted.sum(axis=1) / c.sum(axis=1)
    counts.loc[:, "all"] = c.sum(axis=1)
    vals.loc["all", :] = [*(weighted.sum(axis=0) / c.sum(axis=0)), float(weighted.values.sum() / c.values.sum())]
    counts.loc["all", :] = [*c.sum(axis=0), float(c.values.sum())]
    return vals, counts


#: Heatmap panels: (column, title, colour map with red = worse, value format, colour bar label).
PANELS: tuple[tuple[str, str, str, str, str], ...] = (
    ("age_mae", "Age MAE (years, lower is better)", "RdBu_r", "{:.1f}", "MAE (years)"),
    ("gender_accuracy", "Gender accuracy (higher is better)", "RdBu", "{:.0%}", "accuracy"),
    ("race_accuracy", "Race accuracy (higher is better)", "RdBu", "{:.0%}", "accuracy"),
)
#: Smallest colour half-range (years for MAE, fraction for accuracy), so tiny differences
#: between groups don't look dramatic.
MIN_SPREAD = {"age_mae": 1.0, "gender_accuracy": 0.05, "race_accuracy": 0.05}


def plot_fairness(df: pd.DataFrame, stem: Path, formats: Sequence[str] = ("png",), dpi: int = 120) -> list[Path]:
    """Three race x gender heatmaps (age MAE, gender accuracy, race accuracy).

    Each cell shows the value and its group size; an ``all`` row and column give the
    marginals (n-weighted, so they equal the metric over those faces). Colours are centred
    on the overall value: red = worse than overall, blue = better, white = as overall.
    Groups smaller than ``MIN_GROUP_SIZE`` are marked with ``*``. Returns the written paths.
    """
    if df.empty:
        log.warning("no groups for the fairness plot; skipped")
        return []
    with plot_style():
        n_g = df["gender"].nunique() + 1
        fig = new_figure((3 * (1.5 + 1.25 * n_g) + 1.0, 1.6 + 0.75 * (df["race"].nunique() + 1)))
        axes = fig.subplots(1, len(PANELS))
        # seaborn draws the whole figure once per heatmap (to check its tick labels); without a
        # layout engine until the end, those draws skip the constrained layout's solve.
        engine = fig.get_layout_engine()
        fig.set_layout_engine("none")
        for ax, (col, title, cmap, fmt, cbar_label) in zip(axes, PANELS, strict=True):
            vals, counts = _grid(df, col)
            overall = float(vals.iat[-1, -1])
            spread = max(float(np.nanmax(np.abs(vals.to_numpy(dtype=float) - overall))), MIN_SPREAD[col])
            annot = np.empty(vals.shape, dtype=object)
            for (i, j), v in np.ndenumerate(vals.to_numpy(dtype=float)):
                n = counts.iat[i, j]
                if math.isnan(v) or not n:
                    annot[i, j] = "–"
                else:
                    star = "*" if n < MIN_GROUP_SIZE else ""
                    annot[i, j] = f"{fmt.format(v)}\nn={int(n)}{star}"
            cbar_fmt = mpl.ticker.PercentFormatter(1.0, decimals=0) if "accuracy" in col else None
            sns.heatmap(vals.astype(float), annot=annot, fmt="", cmap=cmap, ax=ax, linewidths=0.5,
                        linecolor="white", annot_kws={"fontsize": 10}, vmin=overall - spread, vmax=overall + spread,
                        cbar_kws={"format": cbar_fmt, "shrink": 0.8, "label": f"{cbar_label} (pale = overall)"})
            # Separate the marginals from the groups.
            ax.axhline(len(vals) - 1, color="black", linewidth=1.5)
            ax.axvline(vals.shape[1] - 1, color="black", linewidth=1.5)
            ax.set_title(title)
            ax.set_xlabel("gender")
            ax.set_ylabel("race")
            ax.tick_params(axis="y", rotation=0)
        fig.set_layout_engine(engine)
        fig.suptitle(f"Who does the model fail? Metrics per race x gender (n={int(df['n'].sum())})\n"
                     f"red = worse than overall, blue = better; * = fewer than {MIN_GROUP_SIZE} faces")
        return save_figure(fig, stem, formats, dpi)


def write_fairness(out_dir: Path, y_true: Mapping[str, np.ndarray], y_pred: Mapping[str, np.ndarray],
                   formats: Sequence[str] = ("png",), dpi: int = 120, plot: bool = True) -> pd.DataFrame:
    """Write ``fairness.csv`` and, if ``plot``, ``fairness.png`` (+ other formats) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = fairness_frame(y_true, y_pred)
    df.to_csv(out_dir / "fairness.csv", index=False, float_format="%.6g")
    if plot:
        plot_fairness(df, out_dir / "fairness", formats, dpi)
    return df
