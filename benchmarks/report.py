"""The benchmark's output: rows in a fixed order, the table printed at the end, and
``results.json`` written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from benchmarks.common import METRIC_ORDER, MODEL_ORDER, Row


def sort_rows(rows: list[Row]) -> None:
    """In place: by ``METRIC_ORDER``, then ``MODEL_ORDER``; unknown metrics and models last."""
    rows.sort(key=lambda r: (METRIC_ORDER.index(r.metric) if r.metric in METRIC_ORDER else len(METRIC_ORDER),
                             MODEL_ORDER.index(r.model) if r.model in MODEL_ORDER else len(MODEL_ORDER)))


def format_table(result: dict[str, Any]) -> str:
    """The rows of ``result`` as an aligned text table, then one line about the machine."""
    header = ("metric", "model", "value", "unit", "target", "result", "note")
    lines = []
    for r in result["rows"]:
        value = "-" if r["value"] is None else f"{r['value']:g}" if isinstance(r["value"], int) else f"{r['value']:.4g}"
        verdict = {True: "PASS", False: "FAIL"}.get(r["pass"], "-" if r["status"] == "ok" else r["status"].upper())
        lines.append((r["metric"], r["model"], value, r["unit"], r["target"] or "-", verdict, r["note"]))
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths), "-" * 4)]
    out += [fmt.format(*line) for line in lines]
    m = result["machine"]
    out.append("")
    out.append(f"machine: {m['cpu_model']}, {m['cores_usable']}/{m['cores']} cores, {m['ram_gib']} GiB RAM, "
               f"Python {m['python']}, TensorFlow {m['tensorflow']}, {m['date']}; load average "
               f"{m['load_average_at_start'][0]} at start, {m['load_average_at_end'][0]} at end")
    return "\n".join(out)


def write_results(result: dict[str, Any], out: Path) -> None:
    """``result`` as indented JSON at ``out``, via a temporary file (no half-written results)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    shutil.move(tmp, out)
