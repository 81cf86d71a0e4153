"""The benchmark's output: rows in a fixed order, the table printed at the end, and
``results.json`` written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from benchmarks.common import BASELINE, METRIC_ORDER, MODEL_ORDER, Row
from faceattr.config import canonical_family

#: Rows written before rows named their section: the section, told by metric prefix.
_SECTION_BY_PREFIX = (("serve_", "serve"), ("latency_b1", "latency"), ("throughput_b32", "latency"),
                      ("video_fps", "video"), ("run_img", "run_img"), ("shipped_", "shipped"),
                      ("head_only", "head_only"), ("train_images", "train"), ("feature_extraction", "train"))


def order_key(metric: str, model: str) -> tuple[int, int]:
    """Where a row goes: by ``METRIC_ORDER``, then ``MODEL_ORDER``; unknown metrics and models last."""
    return (METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER),
            MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER))


def sort_rows(rows: list[Row]) -> None:
    """In place, by :func:`order_key`."""
    rows.sort(key=lambda r: order_key(r.metric, r.model))


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


def section_of(row: dict[str, Any]) -> str | None:
    """The section that measured a ``results.json`` row (told by its metric in older files)."""
    if row.get("section"):
        return str(row["section"])
    if row.get("model") in ("teacher", "ensemble", "student"):
        return "distill"
    if row.get("model") == BASELINE:
        return "baseline"
    metric = str(row.get("metric", ""))
    return next((section for prefix, section in _SECTION_BY_PREFIX if metric.startswith(prefix)), None)


def read_previous(out: Path) -> dict[str, Any] | None:
    """The results file a run is about to replace, or None when there is none to keep from."""
    try:
        previous = json.loads(Path(out).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        print(f"{out}: not readable as earlier results ({exc}); it is replaced whole", flush=True)
        return None
    return previous if isinstance(previous, dict) and isinstance(previous.get("rows"), list) else None


def merge_sections(result: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """``result`` of a run of some sections, with the rows (and serve/distill results) of the
    sections it did not run kept from ``previous``. ``section_runs`` says which command, commit
    and date measured each section; ``command``, ``settings`` and ``machine`` are this run's."""
    ran = set(result["settings"]["sections"])
    this_run = {"command": result["command"], "date": result["machine"].get("date"),
                "git_commit": result["machine"].get("git_commit"), "quick": result["settings"].get("quick")}
    runs = {name: this_run for name in sorted(ran)}
    if previous:
        earlier = previous.get("section_runs") or {}
        machine = previous.get("machine") or {}
        # A file from before section_runs: each kept section was measured by its one command.
        whole_run = {"command": previous.get("command"), "date": machine.get("date"),
                     "git_commit": machine.get("git_commit"), "quick": (previous.get("settings") or {}).get("quick")}
        kept = [row for row in previous["rows"] if section_of(row) not in ran | {None}]
        for row in kept:
            row["model"] = canonical_family(row.get("model"))  # rows measured under a family's older name
            name = section_of(row)
            row["section"] = name
            runs.setdefault(name, earlier.get(name) or whole_run)
        result = {**result, "rows": result["rows"] + kept}
        for name in ("serve", "distill"):
            if name not in ran and name in previous:
                result[name] = previous[name]
    result["rows"].sort(key=lambda r: order_key(r["metric"], r["model"]))  # stable: a section's rows stay together
    result["section_runs"] = dict(sorted(runs.items()))
    return result
