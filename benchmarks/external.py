"""Sections whose measurements live in their own modules: ``serve``
(``benchmarks/serve_load.py``: ``run_serve_benchmark``) and ``distill``
(``benchmarks/distill.py``: ``run_distill_benchmark``). Each is imported only when its section
runs; a module that isn't there is one line and a ``skipped`` row, not a failure."""

from __future__ import annotations

import importlib
import numbers
import re
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks.common import Row, guarded, progress, skipped

#: section -> (module under benchmarks/, its function)
EXTERNAL = {"serve": ("serve_load", "run_serve_benchmark"), "distill": ("distill", "run_distill_benchmark")}


def load_section(section: str) -> tuple[Callable[..., dict] | None, str | None]:
    """The section's function, or None and the one line saying why it can't run."""
    module, function = EXTERNAL[section]
    name = f"benchmarks.{module}"
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None, f"benchmarks/{module}.py is not there yet: section {section!r} skipped"
    fn = getattr(mod, function, None)
    if fn is None:
        return None, f"benchmarks/{module}.py has no {function}(): section {section!r} skipped"
    return fn, None


def _target(value: Any) -> tuple[str, float] | None:
    """``"<= 1"`` or ``["<=", 1]`` -> ("<=", 1.0); anything else None."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(<=|>=)\s*([-+0-9.eE]+)\s*", value)
        return (match.group(1), float(match.group(2))) if match else None
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] in ("<=", ">=") \
            and isinstance(value[1], numbers.Real):
        return str(value[0]), float(value[1])
    return None


def rows_from(section: str, model: str, out: Any) -> list[Row]:
    """Rows from a section's result: its ``rows`` (dicts with ``metric``, ``value``, ``unit``
    and optionally ``model``, ``status``, ``note``, ``target``, ``details``), else one summary
    row whose ``details`` hold the whole result."""
    if isinstance(out, dict) and isinstance(out.get("rows"), list):
        rows = []
        for item in out["rows"]:
            if not isinstance(item, dict) or "metric" not in item:
                continue
            value = item.get("value")
            rows.append(Row(str(item["metric"]), str(item.get("model") or model),
                            float(value) if isinstance(value, numbers.Real) else None, str(item.get("unit") or ""),
                            str(item.get("status") or "ok"), str(item.get("note") or ""),
                            dict(item.get("details") or {}), given_target=_target(item.get("target"))))
        if rows:
            return rows
    return [Row(section, model, None, "", note="figures in details",
                details=dict(out) if isinstance(out, dict) else {"result": out})]


def run_section(section: str, model: str, **kwargs: Any) -> tuple[list[Row], Any]:
    """Run an external section: its rows and its raw result (None when it didn't run). A module
    that fails to import is an ``error`` row, like a measurement that fails."""
    try:
        fn, why = load_section(section)
    except Exception as exc:  # the module is there but does not import
        problem = f"benchmarks/{EXTERNAL[section][0]}.py: cannot import ({type(exc).__name__}: {exc})"
        progress(problem)
        return [Row(section, model, None, "", "error", problem, {"traceback": traceback.format_exc(limit=4)})], None
    if fn is None:
        progress(why)
        return [skipped(section, model, "", why)], None
    raw: list[Any] = []

    def call() -> list[Row]:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        progress(f"{section}: {'.'.join(EXTERNAL[section])}({args})")
        raw.append(fn(**kwargs))
        return rows_from(section, model, raw[0])

    rows = guarded(section, model, "", call)
    return rows, raw[0] if raw else None
