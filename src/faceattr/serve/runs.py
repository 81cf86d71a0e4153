"""The runs browser: run and sweep folders under ``serve.runs_roots`` (outputs/, multirun/,
statistics/), read-only.

A *run* is a folder with ``metrics.json``, ``history.csv`` or ``train_summary.json``; a *sweep*
one with ``sweep_summary.csv`` or ``multirun.yaml``. A run is named by its root's folder name
and its path below it (``statistics/facenet``). Every path asked for is resolved and must stay
inside its root (no ``..``, no link out) and outside ``serve.data_dir`` (the visitors'
uploads), or it is not found.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceattr.serve.errors import ApiError

#: Files of a run the browser shows or serves, by suffix.
PLOT_SUFFIXES = (".png", ".svg")
REPORT_SUFFIXES = (".csv", ".json", ".txt", ".log", ".yaml", ".md")
SERVED_SUFFIXES = PLOT_SUFFIXES + REPORT_SUFFIXES
RUN_MARKERS = ("metrics.json", "history.csv", "train_summary.json")
SWEEP_MARKERS = ("sweep_summary.csv", "multirun.yaml")
#: Folders never entered: caches, models' internals, logs of TensorBoard.
SKIP_DIRS = {"tensorboard", "checkpoints", "backup", ".hydra", "__pycache__", "model", "annotated", "corrections"}
MAX_DEPTH = 6
CACHE_SECONDS = 10.0
#: A comparison's key: the SHA-1 (hex) of its runs' sorted names.
COMPARE_KEY = re.compile(r"[0-9a-f]{40}")


@dataclass
class Run:
    """One run or sweep: ``name`` (``<root>/<relative path>``), ``kind`` (run | sweep), its folder."""

    name: str
    kind: str
    path: Path
    mtime: float

    def metrics(self) -> dict[str, Any]:
        """The numbers of its ``metrics.json`` ({} without one)."""
        try:
            data = json.loads((self.path / "metrics.json").read_text())
        except (OSError, ValueError):
            return {}
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()
                if isinstance(v, int | float | str) or v is None}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "path": str(self.path), "modified": self.mtime,
                "metrics": self.metrics()}

    def files(self) -> dict[str, list[str]]:
        """``{"plots": [...], "reports": [...]}``: file names relative to the run, sorted."""
        plots, reports = [], []
        for path in sorted(self.path.rglob("*")):
            rel = path.relative_to(self.path)
            if any(part in SKIP_DIRS - {".hydra"} for part in rel.parts[:-1]) or not path.is_file():
                continue
            if path.suffix.lower() in PLOT_SUFFIXES:
                plots.append(rel.as_posix())
            elif path.suffix.lower() in REPORT_SUFFIXES and len(rel.parts) <= 2:
                reports.append(rel.as_posix())
        return {"plots": plots, "reports": reports}


class RunsBrowser:
    """Finds runs under ``roots`` (never inside ``exclude``) and resolves names safely."""

    def __init__(self, roots: list[str | Path], exclude: list[str | Path] = ()) -> None:
        self.roots = {Path(r).name: Path(r).resolve() for r in roots}
        self.exclude = [Path(e).resolve() for e in exclude]
        self._cache: tuple[float, list[Run]] | None = None

    def _excluded(self, path: Path) -> bool:
        return any(path == e or path.is_relative_to(e) for e in self.exclude)

    def runs(self) -> list[Run]:
        """Every run and sweep, newest first (cached for a few seconds)."""
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < CACHE_SECONDS:
            return self._cache[1]
        found: list[Run] = []
        for root_name, root in self.roots.items():
            if not root.is_dir():
                continue
            for folder, dirs, files in os.walk(root):
                here = Path(folder)
                depth = len(here.relative_to(root).parts)
                dirs[:] = [d for d in sorted(dirs) if d not in SKIP_DIRS and not d.startswith(".")
                           and not self._excluded(here / d) and depth < MAX_DEPTH]
                names = set(files)
                kind = "sweep" if names & set(SWEEP_MARKERS) else "run" if names & set(RUN_MARKERS) else None
                if kind is None:
                    continue
                rel = here.relative_to(root).as_posix()
                name = root_name if rel == "." else f"{root_name}/{rel}"
                try:
                    mtime = max((here / f).stat().st_mtime for f in names & set(SWEEP_MARKERS + RUN_MARKERS))
                except OSError:
                    continue
                found.append(Run(name, kind, here, mtime))
        found.sort(key=lambda r: r.mtime, reverse=True)
        self._cache = (now, found)
        return found

    def resolve(self, name: str) -> Path | None:
        """The folder or file ``<root>/<relative path>`` names, or None when it is outside every
        root, inside an excluded folder, missing, or the name holds a path trick."""
        parts = name.split("/")
        if (not parts or parts[0] not in self.roots or "\x00" in name
                or any(p in ("", ".", "..") or "\\" in p for p in parts[1:])):
            return None
        root = self.roots[parts[0]]
        try:
            path = root.joinpath(*parts[1:]).resolve()
            if not (path == root or path.is_relative_to(root)) or self._excluded(path) or not path.exists():
                return None
        except (OSError, ValueError):  # a name too long for the file system, a byte it refuses
            return None
        return path

    def run(self, name: str) -> Run | None:
        """The run or sweep of that name (None if there is none)."""
        path = self.resolve(name)
        if path is None or not path.is_dir():
            return None
        return next((r for r in self.runs() if r.path == path), None) or self._probe(name, path)

    @staticmethod
    def _probe(name: str, path: Path) -> Run | None:
        names = {p.name for p in path.iterdir() if p.is_file()}
        kind = "sweep" if names & set(SWEEP_MARKERS) else "run" if names & set(RUN_MARKERS) else None
        return Run(name, kind, path, path.stat().st_mtime) if kind else None

    def file(self, name: str) -> Path | None:
        """A servable file of a run (plot or report), or None."""
        path = self.resolve(name)
        if path is None or not path.is_file() or path.suffix.lower() not in SERVED_SUFFIXES:
            return None
        return path


def compare(runs: list[Run], out_dir: Path) -> dict[str, Any]:
    """The ``compare`` table and plot of ``runs``: rows of ``sweep.read_results`` and the
    comparison plot (``sweep.plot_sweep``) written into ``out_dir``."""
    import pandas as pd  # deferred: pandas, only for the compare page

    from faceattr.evaluation.sweep import plot_sweep, read_results  # deferred: Hydra's callback base; compare page only

    rows = [{"run": r.name, **read_results(r.path)} for r in runs]
    df = pd.DataFrame(rows)
    df.attrs["override_columns"] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_sweep(df, out_dir / "comparison", ("png",), 100) if len(df.columns) > 1 else []
    columns = list(df.columns)
    table = [[None if isinstance(v, float) and not math.isfinite(v) else v for v in row]
             for row in df.itertuples(index=False)]
    return {"columns": columns, "rows": table, "plot": plots[0] if plots else None}


class Comparisons:
    """``compare`` of runs of ``browser`` chosen by name, each comparison written once into
    ``folder/<key>/`` (``key``: the SHA-1 of the runs' sorted names)."""

    def __init__(self, browser: RunsBrowser, folder: Path) -> None:
        self.browser = browser
        self.folder = folder

    def compare(self, names: list[str]) -> dict[str, Any]:
        """The compare page's context of the runs named ``names`` that exist: ``table``
        (:func:`compare`), ``plot`` (the plot's URL, or None) and ``names``; ``ApiError(404)``
        unless two or more exist."""
        chosen = [r for r in (self.browser.run(n) for n in names) if r is not None]
        if len(chosen) < 2:
            raise ApiError(404, "compare: choose two or more runs that exist")
        key = hashlib.sha1("\n".join(sorted(r.name for r in chosen)).encode()).hexdigest()
        result = compare(chosen, self.folder / key)
        plot = f"/runs/compare/plot/{key}.png" if result["plot"] else None
        return {"table": result, "plot": plot, "names": [r.name for r in chosen]}

    def plot(self, key: str) -> Path | None:
        """The plot of comparison ``key`` (a PNG file), or None when there is none."""
        path = self.folder / key / "comparison.png"
        return path if COMPARE_KEY.fullmatch(key) and path.is_file() else None
