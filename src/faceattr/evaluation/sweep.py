"""Compare runs: one table and one plot for a sweep (or any set of runs).

A *run folder* is a Hydra output folder (it has ``.hydra/overrides.yaml``); a *sweep
folder* holds run folders (``0/``, ``1/``, ...) and ``multirun.yaml``. Each run becomes one
row: its overrides as columns, then its results: the metrics of ``metrics.json``
(``age_mae``, ``gender_accuracy``, ..., ``n`` faces and the ``split`` scored) when it was
evaluated, and the best-validation epoch of ``history.csv`` (lowest ``val_loss``) as
``val_*`` columns plus ``best_epoch`` and ``epochs`` when it trained.

``SweepSummaryCallback`` writes the summary into the sweep folder when a multirun ends;
``python src/main.py compare DIR [DIR ...]`` writes it into the compare run's folder.

This module is imported by Hydra for every command (the callback is configured globally),
so pandas and matplotlib are imported only when a summary is made.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from hydra.experimental.callback import Callback

from faceattr.config import EvaluationConfig, settings
from faceattr.errors import InputError
from faceattr.figures import save_figure

if TYPE_CHECKING:
    import pandas as pd
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

OVERRIDES = Path(".hydra") / "overrides.yaml"
#: Overrides that say which command ran, not how: not comparison columns.
IGNORED_OVERRIDES = ("command",)
#: The metrics compared in the plot (test value preferred, else the ``val_`` one), with
#: a title and whether lower is better.
MAIN_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("age_mae", "Age MAE (years)", True),
    ("gender_accuracy", "Gender accuracy", False),
    ("race_accuracy", "Race accuracy", False),
)


def _natural_key(path: Path) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", str(path))]


def find_runs(folder: Path) -> list[Path]:
    """Run folders in ``folder``: itself if it is one, else every run below it (natural order).

    Raises ``InputError`` if ``folder`` does not exist or holds no run.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    if (folder / OVERRIDES).is_file():
        return [folder]
    runs = sorted({p.parent.parent for p in folder.rglob("overrides.yaml") if p.parent.name == ".hydra"},
                  key=_natural_key)
    if not runs:
        raise InputError(f"{folder}: not a run or sweep folder (no {OVERRIDES} inside)")
    return runs


def _parse_value(text: str) -> Any:
    """The typed value of an override's right-hand side (``0.5`` -> float, ``true`` -> bool)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser  # deferred: Hydra's parser (slow)

    try:
        value = OverridesParser.create().parse_override(f"k={text}").value()
    except Exception:  # anything Hydra's grammar rejects stays a string
        return text
    return value if isinstance(value, str | int | float | bool) or value is None else text


def _raw_overrides(run: Path) -> list:
    raw = yaml.safe_load((Path(run) / OVERRIDES).read_text()) or []
    if not isinstance(raw, list):
        raise ValueError("not a list of key=value overrides")
    return raw


def _parse_overrides(raw: Iterable) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in raw:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+~")
        if key in IGNORED_OVERRIDES or key.startswith("hydra."):
            continue
        out[key] = _parse_value(value) if sep else None
    return out


def read_results(run: Path) -> dict[str, Any]:
    """A run's results: ``metrics.json`` (its numbers, ``n`` faces and the ``split`` scored) and
    the best ``history.csv`` row (``val_*``).

    Returns {} for a run that wrote neither (failed, or not a training/evaluation run).
    """
    run = Path(run)
    out: dict[str, Any] = {}
    history = run / "history.csv"
    if history.is_file():
        import pandas as pd  # deferred: pandas; every command loads this module (Hydra's callback)

        try:
            df = pd.read_csv(history)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            log.warning("%s: unreadable (%s); skipped", history, exc)
            df = pd.DataFrame()
        if "val_loss" in df and df["val_loss"].notna().any():
            best = df.loc[df["val_loss"].idxmin()]
            out.update({c: float(best[c]) for c in df.columns if c.startswith("val_")})
            out["best_epoch"] = int(best["epoch"]) + 1 if "epoch" in df else int(df["val_loss"].idxmin()) + 1
            out["epochs"] = len(df)
    metrics_path = run / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.warning("%s: unreadable (%s); skipped", metrics_path, exc)
            metrics = {}
        if "n_test" in metrics and "n" not in metrics:  # written before the count was named ``n``
            metrics["n"] = metrics.pop("n_test")
        out.update({k: (math.nan if v is None else v) for k, v in metrics.items()
                    if isinstance(v, int | float) or v is None})
        if isinstance(metrics.get("split"), str):  # test, or val when the run chose between models
            out["split"] = metrics["split"]
    summary_path = run / "train_summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            summary = None
        for key in ("train_seconds", "objective"):  # objective: what a sweeper minimised
            value = summary.get(key) if isinstance(summary, dict) else None
            if isinstance(value, int | float):
                out[key] = value
    return out


def summarize_runs(dirs: Iterable[Path]) -> pd.DataFrame:
    """One row per run found in ``dirs`` (run and/or sweep folders).

    Columns: ``run`` (folder path), then every override key seen (NaN where a run did not
    set it), then the results of ``read_results`` (test metrics unprefixed, validation
    metrics ``val_*``, ages in years, accuracies in [0, 1]). Runs of ``compare`` itself are
    skipped. Raises ``InputError`` for a missing folder or one without runs.
    """
    import pandas as pd  # deferred: pandas; every command loads this module (Hydra's callback)

    runs: list[Path] = []
    for d in dirs:
        runs.extend(r for r in find_runs(Path(d)) if r not in runs)
    rows, override_keys, result_keys = [], {}, {}
    for run in runs:
        try:
            raw = _raw_overrides(run)
            overrides = _parse_overrides(raw)
            command = next((str(i).partition("=")[2] for i in raw if str(i).startswith("command=")), None)
        except Exception as exc:  # a corrupt overrides.yaml: keep the run, without its overrides
            log.warning("%s: unreadable overrides (%s)", run / OVERRIDES, exc)
            overrides, command = {}, None
        if command == "compare":
            continue
        results = read_results(run)
        override_keys.update(dict.fromkeys(overrides))
        result_keys.update(dict.fromkeys(results))
        rows.append({"run": str(run), **overrides, **results})
    # Results after the overrides, main metrics first; a result never shadows an override.
    main = [m for base, _, _ in MAIN_METRICS for m in (base, f"val_{base}")]
    ordered_results = [k for k in (*main, "val_loss", "objective") if k in result_keys]
    ordered_results += [k for k in result_keys if k not in ordered_results]
    columns = ["run", *override_keys, *(k for k in ordered_results if k not in override_keys)]
    df = pd.DataFrame(rows, columns=columns)
    df.attrs["override_columns"] = list(override_keys)
    log.info("summarised %d runs (%d with results)", len(df), int(has_results(df).sum()))
    return df


def has_results(df: pd.DataFrame) -> pd.Series:
    """Boolean per row: did the run write any compared metric (test or validation)?"""
    import pandas as pd  # deferred: pandas; every command loads this module (Hydra's callback)

    cols = [c for base, _, _ in MAIN_METRICS for c in (base, f"val_{base}") if c in df] + \
        (["val_loss"] if "val_loss" in df else [])
    if not cols:
        return pd.Series(False, index=df.index)
    return df[cols].notna().any(axis=1)


def run_labels(df: pd.DataFrame) -> list[str]:
    """A short label per run: the overrides that differ between runs, else the folder name."""
    override_cols = df.attrs.get("override_columns")
    if override_cols is None:  # e.g. a summary read back from CSV
        override_cols = [c for c in df.columns if c != "run" and c not in _result_columns(df)]
    override_cols = [c for c in override_cols if c in df]
    varying = [c for c in override_cols if df[c].astype(str).nunique(dropna=False) > 1]
    labels = []
    for _, row in df.iterrows():
        parts = [f"{c}={row[c]}" for c in varying if not _isnan(row[c])]
        labels.append(", ".join(parts) if parts else Path(str(row["run"])).name)
    return labels


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _result_columns(df: pd.DataFrame) -> set[str]:
    names = {m for base, _, _ in MAIN_METRICS for m in (base, f"val_{base}")}
    return {c for c in df.columns if c in names or c.startswith(("val_", "age_", "gender_", "race_"))
            or c in ("n", "split", "n_test", "best_epoch", "epochs", "train_seconds")}


def _pick_metric(df: pd.DataFrame, base: str) -> str | None:
    """The test column if it has at least as many values as the validation one, else ``val_``."""
    counts = {c: int(df[c].notna().sum()) for c in (base, f"val_{base}") if c in df}
    counts = {c: n for c, n in counts.items() if n}
    return max(counts, key=lambda c: (counts[c], c == base)) if counts else None


def plot_sweep(df: pd.DataFrame, stem: Path, formats: Sequence[str] = ("png",), dpi: int = 120) -> list[Path]:
    """One horizontal-bar panel per main metric, one bar per run (labelled by its overrides).

    Uses the test metric where runs have one, else the validation metric (the panel title
    says which). The best run of each panel is outlined and starred. Returns the paths.
    """
    import seaborn as sns  # deferred: seaborn; every command loads this module

    from faceattr.evaluation.plots import new_figure, plot_style  # deferred: every command loads this module

    panels = [(col, title, lower) for base, title, lower in MAIN_METRICS if (col := _pick_metric(df, base))]
    if not panels and "val_loss" in df and df["val_loss"].notna().any():
        panels = [("val_loss", "Validation loss", True)]
    if not panels:
        log.warning("no run has metrics to compare; sweep plot skipped")
        return []
    labels = run_labels(df)
    y = np.arange(len(df))
    colors = sns.color_palette("tab10", n_colors=max(len(df), 1)) if len(df) <= 10 else \
        sns.color_palette("husl", n_colors=len(df))
    label_width = min(max((len(s) for s in labels), default=10), 60)
    with plot_style():
        fig = new_figure((1.5 + 0.085 * label_width + 4.2 * len(panels), 1.6 + 0.42 * len(df)))
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False).ravel()
        for k, (ax, (col, title, lower)) in enumerate(zip(axes, panels, strict=True)):
            values = df[col].astype(float).to_numpy()
            ax.barh(y, np.nan_to_num(values, nan=0.0), color=colors)
            finite = np.isfinite(values)
            best = (np.nanargmin(values) if lower else np.nanargmax(values)) if finite.any() else None
            span = np.nanmax(values[finite]) if finite.any() else 1.0
            for i, v in enumerate(values):
                text = "n/a" if not np.isfinite(v) else (f"{v:.2f}" if "accuracy" not in col else f"{v:.1%}")
                ax.annotate(text + (" ★" if i == best else ""), (0 if not np.isfinite(v) else v, i),
                            xytext=(3, 0), textcoords="offset points", va="center", fontsize=10,
                            fontweight="bold" if i == best else "normal")
            if best is not None:
                ax.barh([best], [values[best]], color="none", edgecolor="black", linewidth=2)
            ax.set_xlim(0, span * 1.3 if span > 0 else 1.0)
            scope = "validation, best epoch" if col.startswith("val_") else "test"
            ax.set_title(f"{title}\n({scope}; {'lower' if lower else 'higher'} is better)")
            ax.set_xlabel(col)
            if "accuracy" in col:
                import matplotlib as mpl  # deferred: matplotlib; every command loads this module

                ax.xaxis.set_major_locator(mpl.ticker.FixedLocator([0, 0.25, 0.5, 0.75, 1.0]))
                ax.xaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0, decimals=0))
            if k == 0:
                ax.set_yticks(y, [s if len(s) <= 60 else s[:57] + "..." for s in labels])
                ax.set_ylabel("run")
                ax.invert_yaxis()  # first run on top (axes share y: once is enough)
            ax.grid(axis="y", visible=False)
        fig.suptitle(f"Sweep comparison ({len(df)} runs)")
        return save_figure(fig, stem, formats, dpi)


def write_sweep_summary(df: pd.DataFrame, out_dir: Path, formats: Sequence[str] = ("png",),
                        dpi: int = 120) -> dict[str, Path | None]:
    """Write ``sweep_summary.csv`` and ``sweep_comparison.png`` (+ SVG if asked) into ``out_dir``.

    Returns ``{"summary": csv path, "plot": png path or None when nothing could be plotted}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / "sweep_summary.csv"
    df.to_csv(csv, index=False, float_format="%.6g")
    paths = plot_sweep(df, out_dir / "sweep_comparison", formats, dpi)
    _log_best(df)
    log.info("sweep summary of %d runs written to %s", len(df), out_dir)
    return {"summary": csv, "plot": paths[0] if paths else None}


def _log_best(df: pd.DataFrame) -> None:
    for base, _title, lower in MAIN_METRICS:
        col = _pick_metric(df, base)
        if col is None:
            continue
        idx = df[col].astype(float).idxmin() if lower else df[col].astype(float).idxmax()
        log.info("best %s: %.4g (%s)", col, df.loc[idx, col], df.loc[idx, "run"])


def _plot_settings(cfg: Any) -> tuple[list[str], int]:
    """Plot formats and dpi of ``cfg.evaluation`` (the schema's defaults for a config without it)."""
    ev = settings(EvaluationConfig, cfg.evaluation if "evaluation" in cfg else None, "evaluation.")
    return [str(f) for f in ev.formats], int(ev.dpi)


class SweepSummaryCallback(Callback):
    """Hydra callback: when a multirun ends, write the sweep summary into its sweep folder.

    Never fails the sweep: problems are logged and the summary skipped. Sweeps whose runs
    wrote no metrics (e.g. ``stats -m``) are skipped too.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            df = summarize_runs([sweep_dir])
            if not has_results(df).any():
                log.info("no run of %s wrote metrics; no sweep summary", sweep_dir)
                return
            formats, dpi = _plot_settings(config)
            written = write_sweep_summary(df, sweep_dir, formats, dpi)
            print(f"Sweep summary written to {written['summary']}")
        except Exception as exc:  # a summary must never fail the sweep it summarises
            log.warning("sweep summary skipped: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(10))


def compare_runs(cfg: DictConfig, run_dir: Path) -> dict:
    """Summarise runs/sweeps into ``run_dir``.

    Raises ``InputError`` when ``compare.dirs`` is empty, a folder is missing, or a folder
    holds no run. Returns the number of runs and the paths written.
    """
    dirs = [Path(str(d)) for d in (cfg.compare.dirs or [])]
    if not dirs:
        raise InputError("compare.dirs: give one or more sweep or run folders")
    for d in dirs:
        if not d.is_dir():
            raise InputError(f"{d}: no such folder")
    df = summarize_runs(dirs)
    if df.empty:
        raise InputError(f"{', '.join(map(str, dirs))}: no runs to compare")
    if not has_results(df).any():
        log.warning("none of the %d runs wrote metrics.json or history.csv", len(df))
    formats, dpi = _plot_settings(cfg)
    written = write_sweep_summary(df, run_dir, formats, dpi)
    print(f"Compared {len(df)} runs: {written['summary']}" + (f", {written['plot']}" if written["plot"] else ""))
    return {"runs": len(df), "summary": str(written["summary"]),
            "plot": str(written["plot"]) if written["plot"] else None}
