"""Measure the shipped models and the frozen FaceNet graph side by side, in one run.

    python benchmarks/run.py                       # everything, both models, writes benchmarks/results.json
    python benchmarks/run.py --quick --models cnn --model-dir cnn=outputs/train/.../model

Prints one table and writes a JSON file with a description of the machine and one row per
measurement: ``metric, model, value, unit, target, pass``. What each metric means is in
``benchmarks/README.md``. A model whose folder is missing gets ``skipped`` rows with the
reason instead of stopping the run; a measurement that fails gets an ``error`` row.

The script measures the project's own code paths (``Predictor`` with the runner ``run``
serves, ``run --video``'s own ``run_video`` through its per-frame timing hook,
``python src/main.py run --img`` as a subprocess, ``FeatureCache``), not copies of them.
``latency_b1``/``throughput_b32``/``video_fps`` use what ``run`` serves (``run.backend``: the
TensorFlow Lite export when the model folder has a current one); ``*_keras`` rows give the
Keras model's figures beside them. TensorFlow's thread pools are left at their defaults (all cores).
This file parses the command line and runs the sections; each section's measurements live
in their own module beside it (``latency``, ``video``, ``images``, ``training``; ``serve`` and
``distill`` in ``serve_load`` and ``distill``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts this folder first on sys.path, where its modules (video.py,
# models.py...) would shadow any top-level module of the same name; the project root instead
# makes them the ``benchmarks`` package.
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import external, images, latency, training, video  # noqa: E402
from benchmarks.common import (  # noqa: E402
    BASELINE,
    DEFAULT_OUT,
    FULL,
    MODELS,
    QUICK,
    Row,
    Settings,
    guarded,
    progress,
    rel,
    skipped,
)
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.models import (  # noqa: E402
    ModelEntry,
    default_tta_flip,
    facenet_package_missing,
    load_entry,
    model_config,
    model_entries,
    unusable,
)
from benchmarks.report import format_table, merge_sections, read_previous, sort_rows, write_results  # noqa: E402
from faceattr.config import canonical_family  # noqa: E402

SECTIONS = ("latency", "baseline", "video", "run_img", "train", "shipped", "head_only", "serve", "distill")


@dataclass
class Context:
    """What the sections share in one run."""

    args: argparse.Namespace
    settings: Settings
    entries: dict[str, ModelEntry]
    scratch: Path
    tta: bool
    summaries: dict[str, Path]
    raw: dict[str, Any]  # the serve/distill sections' own results, kept whole in results.json


def section_latency(c: Context) -> list[Row]:
    rows: list[Row] = []
    for entry in c.entries.values():
        if entry.usable:
            rows += guarded("latency_b1", entry.name, "ms/face", lambda e=entry: latency.measure_model(e, c.settings))
            if entry.served.backend != "keras":  # the Keras graph beside it, for comparison
                rows += guarded("latency_b1_keras", entry.name, "ms/face",
                                lambda e=entry: latency.measure_model(e, c.settings, keras_rows=True))
        else:
            rows += [unusable("latency_b1", entry, "ms/face"), unusable("throughput_b32", entry, "faces/s")]
    return rows


def section_baseline(c: Context) -> list[Row]:
    fn_cfg, _ = model_config("facenet", c.entries.get("facenet"))
    output = "embedding" if fn_cfg.get("features") == "embedding" else "pooled"
    if no_graph := facenet_package_missing():
        return [skipped("latency_b1", BASELINE, "ms/face", no_graph),
                skipped("throughput_b32", BASELINE, "faces/s", no_graph)]
    return guarded("latency_b1", BASELINE, "ms/face", lambda: latency.measure_frozen_graph(c.settings, output))


def section_video(c: Context) -> list[Row]:
    """``run --video`` on a two-face and a four-face clip, with the default settings and with the
    Haar cascade (``detector=haar``) in the same run; every face of every frame (refresh 1); and
    the two-face clip played at 30 fps like a camera (the share of frames the model keeps)."""
    rows: list[Row] = []
    clips: dict[int, Path] = {}
    if any(e.usable for e in c.entries.values()):
        for faces in (2, 4):
            progress(f"writing the 640x480 {faces}-face test clip ({c.settings.video_frames} frames)")
            clips[faces] = video.make_clip(c.scratch / f"{faces}_faces.mp4", c.settings.video_frames, faces=faces)
    # (metric, unit, clip's faces, measure_video's keywords)
    runs: list[tuple[str, str, int, dict[str, Any]]] = [
        ("video_fps", "frames/s", 2, {}),
        ("video_fps_haar", "frames/s", 2, {"detector": "haar"}),
        ("video_fps_4faces", "frames/s", 4, {}),
        ("video_fps_4faces_haar", "frames/s", 4, {"detector": "haar"}),
        ("video_fps_refresh1", "frames/s", 2, {"refresh_every": 1}),
        ("video_camera_kept", "share", 2, {"sync": False}),
        ("video_camera_kept_haar", "share", 2, {"sync": False, "detector": "haar"}),
    ]
    for entry in c.entries.values():
        if not (entry.usable and clips):
            rows.append(unusable("video_fps", entry, "frames/s"))
            continue
        for metric, unit, faces, keywords in runs:
            rows += guarded(metric, entry.name, unit,
                            lambda e=entry, m=metric, f=faces, k=keywords: video.measure_video(
                                e, clips[f], c.scratch, c.tta, metric=m, **k))
    return rows


def section_run_img(c: Context) -> list[Row]:
    rows: list[Row] = []
    for entry in c.entries.values():
        if entry.missing:
            rows.append(skipped("run_img_cold", entry.name, "s", entry.missing))
        else:
            rows += guarded("run_img_cold", entry.name, "s",
                            lambda e=entry: images.measure_run_img(e, c.settings.run_img_repeats, c.scratch))
    return rows


def section_train(c: Context) -> list[Row]:
    rows: list[Row] = []
    if "cnn" in c.entries:
        rows += guarded("train_images_per_s", "cnn", "images/s",
                        lambda: training.measure_cnn_training(c.entries["cnn"], c.settings))
    if "facenet" in c.entries and (no_graph := facenet_package_missing()):
        rows.append(skipped("feature_extraction_images_per_s", "facenet", "images/s", no_graph))
    elif "facenet" in c.entries:
        rows += guarded("feature_extraction_images_per_s", "facenet", "images/s",
                        lambda: training.measure_feature_extraction(c.entries["facenet"], c.settings, c.scratch))
    return rows


def section_shipped(c: Context) -> list[Row]:
    rows: list[Row] = []
    for entry in c.entries.values():
        rows += guarded("shipped_train_seconds", entry.name, "s",
                        lambda e=entry: training.shipped_rows(e, c.summaries.get(e.name)))
    return rows


def section_head_only(c: Context) -> list[Row]:
    if "facenet" not in c.entries:
        return []
    return guarded("head_only_seconds", "facenet", "s", lambda: training.head_only_row(c.args))


def section_serve(c: Context) -> list[Row]:
    model = "facenet" if "facenet" in c.entries else next(iter(c.entries))
    rows, c.raw["serve"] = external.run_section("serve", model, model_type=model, uploads=c.settings.serve_uploads,
                                                clients=c.settings.serve_clients)
    return rows


def section_distill(c: Context) -> list[Row]:
    student = {"student_dir": str(c.args.student)} if c.args.student else {}
    rows, c.raw["distill"] = external.run_section("distill", "student", **student)
    return rows


#: In the order they run; models are loaded before the first section that needs them in memory
#: and freed before ``run_img`` (subprocesses and training want the memory).
RUNNERS: dict[str, Callable[[Context], list[Row]]] = {
    "latency": section_latency, "baseline": section_baseline, "video": section_video,
    "run_img": section_run_img, "train": section_train, "shipped": section_shipped,
    "head_only": section_head_only, "serve": section_serve, "distill": section_distill,
}
IN_MEMORY = {"latency", "video"}  # sections measuring the models loaded in this process


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in values or []:
        name, sep, path = item.partition("=")
        name = canonical_family(name)  # normal: the CNN family's former name
        if not sep or name not in MODELS or not path:
            raise SystemExit(f"{flag}: expected NAME=PATH with NAME in {'|'.join(MODELS)}, got {item!r}")
        out[name] = Path(path).expanduser()
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", type=canonical_family, choices=MODELS, default=list(MODELS),
                   help="models to measure (normal: the CNN family's former name, as cnn)")
    p.add_argument("--model-dir", action="append", default=[], metavar="NAME=DIR",
                   help="use DIR instead of saved_model/NAME (repeatable)")
    p.add_argument("--student", type=Path, metavar="DIR",
                   help="the distill section's student model folder (default: outputs/distill_cnn/model)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test, not for reporting)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="JSON results (default: benchmarks/results.json); with --only, the sections not run "
                        "keep their rows from the file's earlier runs")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION",
                   help=f"run only these sections: {', '.join(SECTIONS)}")
    p.add_argument("--no-baseline", action="store_true", help="leave out the frozen-graph rows")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation in the video pipeline (default: as `run`, run.video_tta_flip)")
    p.add_argument("--train-summary", action="append", default=[], metavar="NAME=PATH",
                   help="a training run's train_summary.json for the shipped NAME model (repeatable)")
    p.add_argument("--head-only-seconds", metavar="SECONDS|FILE",
                   help="the time of a cached FaceNet head-only run on the full data, or its train_summary.json")
    p.add_argument("--full", action="store_true",
                   help="measure that time: run `train experiment=facenet_full` (needs the full data set)")
    p.add_argument("--data-path", help="data.path for --full (default: the config's)")
    p.add_argument("--full-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for the --full training run (repeatable)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every asked-for section, in ``RUNNERS`` order; returns what ``results.json`` holds."""
    settings = QUICK if args.quick else FULL
    sections = set(args.only)
    if args.no_baseline:
        sections.discard("baseline")
    overrides = _pairs(args.model_dir, "--model-dir")
    summaries = _pairs(args.train_summary, "--train-summary")
    progress("importing TensorFlow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    for setter in (tf.config.threading.set_intra_op_parallelism_threads,
                   tf.config.threading.set_inter_op_parallelism_threads):
        # 0 = TensorFlow's default (one thread per core). Once TF has run an op in this process
        # (e.g. under pytest) the pools can't change any more; they are then whatever they were.
        with contextlib.suppress(RuntimeError):
            setter(0)
    machine = machine_info()
    entries = model_entries(args.models, overrides)
    tta = default_tta_flip() if args.tta_flip is None else bool(args.tta_flip)
    rows: list[Row] = []
    raw: dict[str, Any] = {}

    with tempfile.TemporaryDirectory(prefix="faceattr-bench-") as tmp:
        context = Context(args, settings, entries, Path(tmp), tta, summaries, raw)
        if sections & IN_MEMORY:
            for entry in entries.values():
                load_entry(entry)
        for name, runner in RUNNERS.items():
            if name == "run_img":
                for entry in entries.values():  # free the models before the subprocesses and training
                    entry.loaded = entry.served = None
            if name in sections:
                measured = runner(context)
                for row in measured:
                    row.section = name
                rows += measured

    sort_rows(rows)
    latency.compare_with_baseline(rows)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "benchmark": "faceattr",
        "command": args.command_line,
        "settings": {"quick": bool(args.quick), **settings.__dict__, "sections": sorted(sections),
                     "video_tta_flip": tta},
        "machine": machine,
        "models": {e.name: {"dir": rel(e.dir), "present": e.missing is None, "reason": e.reason or None,
                            "input_size": (e.raw_info or {}).get("input_size")} for e in entries.values()},
        "rows": [r.as_json() for r in rows],
    }
    result.update({name: value for name, value in raw.items() if value is not None})
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.command_line = " ".join(["python benchmarks/run.py", *argv])
    out = Path(args.out)
    # Some sections only: the file keeps the other sections' rows from its last run.
    previous = read_previous(out) if set(args.only) < set(SECTIONS) else None
    result = merge_sections(run(args), previous)
    write_results(result, out)
    print(format_table(result))
    print(f"\nResults written to {out}")
    errors = [r for r in result["rows"] if r["status"] == "error"]
    if errors:
        print(f"{len(errors)} measurement(s) failed; see the 'error' rows", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
