"""benchmarks/run.py at --quick settings on a tiny real CNN (the shipped models may not exist yet)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import pytest
from omegaconf import OmegaConf

from faceattr.config import compose_config, group_node
from faceattr.models import io
from faceattr.models.cnn import build_cnn
from faceattr.models.export import export_tflite
from faceattr.models.info import ModelInfo

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "run.py"
TINY_SIZE = 32
#: The sections measured in this process and its subprocesses (serve and distill have their own tests).
IN_PROCESS_SECTIONS = ("latency", "baseline", "video", "run_img", "train", "shipped", "head_only")
#: Methods of the face pipeline, predictor and detector that a benchmark must call, never replace.
PIPELINE_METHODS = {"detect", "crop", "crops", "predict", "predict_arrays", "prepare", "warmup", "update",
                    "needs_prediction"}


def _graph_available() -> bool:
    from faceattr.errors import ModelError
    from faceattr.models.facenet_graph import facenet_graph_path

    try:
        facenet_graph_path()
    except ModelError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    cfg = OmegaConf.merge(group_node("model", "cnn"),
                          {"input_size": TINY_SIZE, "filters": [8, 16], "heads": {"hidden_units": [8]}})
    model_dir = tmp_path_factory.mktemp("bench_model") / "model"
    io.save_model(model_dir, ModelInfo(model_type="cnn", input_size=TINY_SIZE), build_cnn(cfg))
    export_tflite(model_dir)  # as training does: `run` serves the export, the Keras rows sit beside it
    return model_dir


@pytest.fixture(scope="module")
def bench():
    """benchmarks/run.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("faceattr_benchmarks_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.slow
def test_quick_run_measures_cnn_and_the_baseline(tmp_path, tiny_model_dir):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--models", "cnn", "--model-dir", f"cnn={tiny_model_dir}",
         "--out", str(out), "--only", *IN_PROCESS_SECTIONS],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "latency_b1" in proc.stdout and f"Results written to {out}" in proc.stdout

    result = json.loads(out.read_text())
    machine = result["machine"]
    for key in ("cpu_model", "cores", "ram_gib", "python", "tensorflow", "date"):
        assert machine[key], key
    assert machine["cores"] >= 1 and machine["ram_gib"] > 0
    assert result["settings"]["quick"] is True
    assert result["models"]["cnn"]["present"] is True

    rows = {(r["metric"], r["model"]): r for r in result["rows"]}
    assert not any(r["model"] == "facenet" for r in result["rows"])  # --models cnn
    measured = [("latency_b1", "cnn"), ("throughput_b32", "cnn"), ("run_img_cold", "cnn"),
                ("video_fps", "cnn"), ("train_images_per_s", "cnn"), ("latency_b1_keras", "cnn"),
                ("throughput_b32_keras", "cnn")]
    baseline = [("latency_b1", "frozen_graph"), ("throughput_b32", "frozen_graph")]
    for key in measured + (baseline if _graph_available() else []):
        row = rows[key]
        assert row["status"] == "ok", (key, row["note"])
        assert isinstance(row["value"], int | float) and row["value"] > 0, key
    for key in baseline if not _graph_available() else []:
        assert rows[key]["status"] == "skipped" and rows[key]["note"]

    # What `run` serves (the export) is what the targeted rows measure; Keras is beside it.
    for metric in ("latency_b1", "throughput_b32", "video_fps"):
        assert rows[metric, "cnn"]["details"]["backend"] == "tflite", metric
    assert rows["latency_b1_keras", "cnn"]["details"]["backend"] == "keras"
    assert rows["latency_b1_keras", "cnn"]["target"] is None

    # Targets and verdicts where the issue sets them, none elsewhere.
    assert rows["latency_b1", "cnn"]["target"] == "<= 5"
    assert rows["video_fps", "cnn"]["target"] == ">= 30"
    assert rows["video_fps_4faces", "cnn"]["target"] == ">= 25"
    assert rows["run_img_cold", "cnn"]["target"] == "<= 8"
    assert rows["throughput_b32", "cnn"]["target"] is None and rows["throughput_b32", "cnn"]["pass"] is None

    # The pipelines really saw faces: one in the photo, two per video frame.
    assert rows["run_img_cold", "cnn"]["details"]["faces"] == 1
    video = rows["video_fps", "cnn"]["details"]
    frames = result["settings"]["video_frames"]
    assert video["frames"] == video["frames_written"] == video["frames_processed"] == frames  # run.sync
    assert video["resolution"] == "640x480" and video["faces_per_frame"] >= 1.5
    # The per-frame stages come from run_video's own hook and add up to its frame rate.
    stages = [video[f"{k}_ms_per_frame"] for k in ("detect", "crop", "predict", "other")]
    assert all(ms > 0 for ms in stages[:3]) and stages[3] >= 0, video
    assert sum(stages) == pytest.approx(1000.0 / rows["video_fps", "cnn"]["value"], rel=0.02, abs=0.05)
    assert video["seconds"] == pytest.approx(frames / rows["video_fps", "cnn"]["value"], rel=0.02)
    # With run's default refresh, the model sees fewer faces than are tracked; with 1, all of them.
    every = rows["video_fps_refresh1", "cnn"]["details"]
    assert every["refresh_every"] == 1 and every["model_faces_per_frame"] == pytest.approx(every["faces_per_frame"])
    if video["refresh_every"] > 1:
        assert video["model_faces_per_frame"] < video["faces_per_frame"]
    # The default (BlazeFace, aligned) and the Haar cascade on the same clip, in the same run; four faces.
    haar = rows["video_fps_haar", "cnn"]["details"]
    assert video["detector"] == "blazeface" and haar["detector"] == "haar" and haar["faces_per_frame"] >= 1.5
    assert video["aligned_share"] > 0.9 and haar["aligned_share"] == 0.0  # Haar gives no landmarks
    four = rows["video_fps_4faces", "cnn"]["details"]
    assert four["faces_per_frame"] >= 3.5 and four["model_calls_per_frame"] <= 1.0  # a frame's faces: one batch
    # Played at 30 fps like a camera: the share of its frames the model took.
    camera = rows["video_camera_kept", "cnn"]
    assert camera["unit"] == "share" and 0 < camera["value"] <= 1 and camera["details"]["sync"] is False
    kept = camera["details"]["frames_processed"] / camera["details"]["frames"]
    assert camera["value"] == pytest.approx(kept, abs=1e-4)

    # The tiny model has no training log: skipped, with the reason and the way out.
    shipped = rows["shipped_train_seconds", "cnn"]
    assert shipped["status"] == "skipped" and "--train-summary" in shipped["note"]


@pytest.mark.parametrize("metric, value, expected", [("latency_b1", 4.0, True), ("latency_b1", 5.0, True),
                                                     ("latency_b1", 5.5, False), ("video_fps", 30.0, True),
                                                     ("video_fps", 24.0, False)])
def test_verdict_compares_the_value_with_its_target(bench, metric, value, expected):
    assert bench.Row(metric, "cnn", value, "unit").as_json()["pass"] is expected
    assert bench.Row(metric, "cnn", value, "unit", status="error").as_json()["pass"] is None
    assert bench.Row("throughput_b32", "cnn", value, "unit").as_json()["pass"] is None  # no target


def test_missing_model_is_skipped_with_a_reason(tmp_path, bench):
    out = tmp_path / "r.json"
    summary = tmp_path / "train_summary.json"
    summary.write_text(json.dumps({"train_seconds": 500.0, "epochs_run": 10, "feature_seconds": 380.0,
                                   "feature_images_extracted": 19000}))
    code = bench.main(["--quick", "--models", "facenet", "--model-dir", f"facenet={tmp_path / 'nothing'}",
                       "--only", "latency", "video", "run_img", "shipped", "head_only",
                       "--train-summary", f"facenet={summary}", "--head-only-seconds", "123.5", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["models"]["facenet"]["present"] is False
    rows = {(r["metric"], r["model"]): r for r in result["rows"]}
    for metric in ("latency_b1", "throughput_b32", "video_fps", "run_img_cold"):
        row = rows[metric, "facenet"]
        assert row["status"] == "skipped" and row["value"] is None and row["pass"] is None
        assert "no model folder" in row["note"]
    assert rows["shipped_train_seconds", "facenet"]["value"] == 500.0
    assert rows["shipped_epochs_run", "facenet"]["value"] == 10
    assert rows["shipped_feature_images_per_s", "facenet"]["value"] == pytest.approx(19000 / 380.0, rel=1e-3)
    assert rows["shipped_head_seconds", "facenet"]["value"] == pytest.approx(120.0)
    assert rows["head_only_seconds", "facenet"]["value"] == 123.5


# ---------------------------------------------------------------------------------------
# The video section is `run --video` itself
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parts(bench) -> SimpleNamespace:
    """The benchmark's section modules (importable once run.py has put the project root on sys.path)."""
    return SimpleNamespace(**{name: importlib.import_module(f"benchmarks.{name}")
                              for name in ("video", "models", "external")})


@pytest.fixture(scope="module")
def tiny_entry(parts, tiny_model_dir):
    entry = parts.models.model_entries(["cnn"], {"cnn": tiny_model_dir})["cnn"]
    parts.models.load_entry(entry)
    assert entry.usable, entry.reason
    return entry


def _frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.mark.slow
def test_video_section_runs_the_run_video_loop_with_its_hook(tmp_path, parts, tiny_entry, capsys):
    from faceattr.inference.pipeline import FacePipeline
    from faceattr.inference.video import FrameStats, run_video

    clip = parts.video.make_clip(tmp_path / "clip.mp4", frames=6)  # written with cv2.VideoWriter
    row = parts.video.measure_video(tiny_entry, clip, tmp_path, tta_flip=False, refresh_every=3)
    d = row.details
    assert row.metric == "video_fps_refresh3" and row.status == "ok" and row.value > 0
    assert d["frames"] == d["frames_written"] == d["frames_processed"] == 6 and d["resolution"] == "640x480"
    # run_video wrote the annotated clip the benchmark asked for, every frame of it.
    assert _frames(tmp_path / "annotated_cnn_video_fps_refresh3.mp4") == 6
    assert "Video " in capsys.readouterr().err  # run's own summary line, moved off the table's stdout

    # `run --video` with the same settings, called directly: the hook fires once per frame, and
    # the faces detected and predicted are the benchmark's.
    cfg = parts.video.video_config(clip, tmp_path / "direct.mp4", False, 3)
    pipeline = FacePipeline.from_config(cfg, predictor=parts.models.served_predictor(tiny_entry, 32, False), video=True)
    seen: list[FrameStats] = []
    result = run_video(cfg, tmp_path, pipeline, on_frame=seen.append)
    assert [s.frame for s in seen] == list(range(1, 7)) and result["frames_read"] == 6
    assert seen[-1].stages.faces / 6 == pytest.approx(d["faces_per_frame"], abs=0.01) and d["faces_per_frame"] >= 1.5
    assert seen[-1].stages.predicted / 6 == pytest.approx(d["model_faces_per_frame"], abs=0.01)
    # refresh_every=3: a tracked face goes through the model on frames 1 and 4 only.
    assert d["model_faces_per_frame"] < d["faces_per_frame"]


def test_detector_benchmark_times_frames_of_the_video_clips(tmp_path):
    """benchmarks/detectors.py's frame figures: the video section's clips, decoded, every face
    found by the default video detector and by Haar."""
    detectors = importlib.import_module("benchmarks.detectors")
    from faceattr.inference.detectors import make_detector

    frames = detectors.clip_frames(tmp_path, faces=4, frames=4)
    assert len(frames) == 4 and frames[0].shape == (480, 640, 3)
    for settings in ({"name": "blazeface", "min_confidence": 0.5}, {"name": "haar", "scale_factor": 1.2}):
        ms, found = detectors.measure_frames(make_detector(settings), frames)
        assert ms > 0 and found == 4.0, settings


def test_video_config_is_what_run_video_is_given(tmp_path, parts):
    cfg = parts.video.video_config(tmp_path / "a b.mp4", tmp_path / "o'ut.mp4", True)
    assert cfg.run.video == str(tmp_path / "a b.mp4") and cfg.run.output == str(tmp_path / "o'ut.mp4")
    assert cfg.run.sync is True and cfg.run.display is False and cfg.run.video_tta_flip is True
    assert cfg.run.tracker.refresh_every == compose_config(["command=run"]).run.tracker.refresh_every


def test_benchmarks_use_no_private_names_and_patch_nothing():
    """The benchmarks call the toolkit's public functions; they never replace its methods."""
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        private = [f"{node.module}.{a.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and (node.module or "").startswith("faceattr") for a in node.names if a.name.startswith("_")]
        assert not private, (path.name, private)
        patched = [ast.unparse(t) for node in ast.walk(tree) if isinstance(node, ast.Assign | ast.AugAssign)
                   for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                   if isinstance(t, ast.Attribute) and t.attr in PIPELINE_METHODS]
        assert not patched, (path.name, patched)


# ---------------------------------------------------------------------------------------
# Sections in their own modules (serve, distill)
# ---------------------------------------------------------------------------------------
def test_external_section_missing_module_is_one_line_and_a_skipped_row(parts, monkeypatch, capsys):
    monkeypatch.setitem(parts.external.EXTERNAL, "gone", ("no_such_benchmark_module", "run_it"))
    rows, raw = parts.external.run_section("gone", "facenet")
    assert raw is None and len(rows) == 1
    row = rows[0].as_json()
    assert row["status"] == "skipped" and row["pass"] is None
    assert row["note"] == "benchmarks/no_such_benchmark_module.py is not there yet: section 'gone' skipped"
    said = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].endswith(row["note"])  # one progress line, nothing else


@pytest.mark.parametrize("section, module", [("serve", "serve_load"), ("distill", "distill")])
def test_serve_and_distill_sections_find_their_modules(parts, section, module):
    fn, why = parts.external.load_section(section)
    if (ROOT / "benchmarks" / f"{module}.py").is_file():
        assert callable(fn) and why is None
    else:
        assert fn is None and why == f"benchmarks/{module}.py is not there yet: section {section!r} skipped"


def test_the_cnn_familys_former_name_measures_the_cnn(bench, parts, tmp_path):
    """``--models normal`` and ``--model-dir normal=DIR`` mean the cnn model; a folder whose
    model_info.json says ``model_type: normal`` (the shipped one does) is the cnn model."""
    args = bench.parse_args(["--models", "normal", "facenet", "--model-dir", f"normal={tmp_path}"])
    assert args.models == ["cnn", "facenet"] and bench._pairs(args.model_dir, "--model-dir") == {"cnn": tmp_path}
    (tmp_path / "model_info.json").write_text(json.dumps({"model_type": "normal", "input_size": 32}))
    entry = parts.models.model_entries(["cnn"], {"cnn": tmp_path})["cnn"]
    assert not entry.missing, entry.missing


def test_external_rows_keep_their_targets(parts):
    rows = parts.external.rows_from("serve", "facenet", {"rows": [
        {"metric": "serve_p95_s", "value": 0.8, "unit": "s", "target": "<= 1"},
        {"metric": "serve_uploads_per_s", "value": 4.0, "unit": "uploads/s", "target": [">=", 5]},
        {"metric": "serve_errors", "model": "cnn", "value": 0, "unit": "errors"}]})
    got = {r.metric: r.as_json() for r in rows}
    assert got["serve_p95_s"]["pass"] is True and got["serve_p95_s"]["target"] == "<= 1"
    assert got["serve_uploads_per_s"]["pass"] is False
    assert got["serve_errors"]["model"] == "cnn" and got["serve_errors"]["pass"] is None
    flat = parts.external.rows_from("distill", "student", {"student_latency_ms": 1.5})
    assert len(flat) == 1 and flat[0].details == {"student_latency_ms": 1.5} and flat[0].metric == "distill"


def test_a_run_of_some_sections_keeps_the_other_sections_rows(tmp_path):
    from benchmarks.report import merge_sections, read_previous

    earlier = {"command": "python benchmarks/run.py", "settings": {"sections": ["latency", "serve", "distill"]},
               "machine": {"date": "day 1", "git_commit": "aaa"}, "serve": {"p95_ms": 1100}, "distill": {"n": 1},
               # rows of a file older than sections, and than the CNN family's name (its alias "normal")
               "rows": [{"metric": "latency_b1", "model": "normal", "value": 3.0},
                        {"metric": "serve_p95_ms", "model": "facenet", "value": 1100.0},
                        {"metric": "latency_b1", "model": "student", "value": 9.0}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(earlier))
    now = {"command": "python benchmarks/run.py --only serve", "settings": {"sections": ["serve"]},
           "machine": {"date": "day 2", "git_commit": "bbb"}, "serve": {"p95_ms": 950},
           "rows": [{"metric": "serve_p95_ms", "model": "facenet", "value": 950.0, "section": "serve"}]}
    merged = merge_sections(now, read_previous(path))
    assert {(r["metric"], r["model"]): (r["value"], r["section"]) for r in merged["rows"]} == {
        ("latency_b1", "cnn"): (3.0, "latency"), ("serve_p95_ms", "facenet"): (950.0, "serve"),
        ("latency_b1", "student"): (9.0, "distill")}
    assert merged["serve"] == {"p95_ms": 950} and merged["distill"] == {"n": 1}
    runs = merged["section_runs"]
    assert (runs["serve"]["date"], runs["latency"]["date"], runs["distill"]["git_commit"]) == ("day 2", "day 1", "aaa")
    # Nothing to keep from: a missing file, or one that isn't results.
    assert read_previous(tmp_path / "missing.json") is None
    (tmp_path / "broken.json").write_text("{")
    assert read_previous(tmp_path / "broken.json") is None
    assert merge_sections(now, None)["rows"] == now["rows"]


def test_models_timed_in_turns_share_a_drifting_machine(bench, monkeypatch):
    """Two identical models on a machine that slows down call by call: timed in turns their
    medians agree, timed one after the other the second looks far slower."""
    from benchmarks import common

    clock = {"now": 0.0, "calls": 0}

    def work():  # 1 ms, plus 0.1 ms for every call made on the machine before
        clock["now"] += 0.001 * (1 + 0.1 * clock["calls"])
        clock["calls"] += 1

    monkeypatch.setattr(common.time, "perf_counter", lambda: clock["now"])
    turns = common.time_interleaved({"a": work, "b": work}, calls=30, warmup=2)
    assert [len(v) for v in turns.values()] == [30, 30] and clock["calls"] == 2 * (30 + 2)
    assert common.median(turns["b"]) / common.median(turns["a"]) == pytest.approx(1.0, abs=0.02)
    clock.update(now=0.0, calls=0)
    first, second = common.time_calls(work, 30, 2), common.time_calls(work, 30, 2)
    assert common.median(second) / common.median(first) > 1.5  # what the turns are for
    assert common.time_interleaved({}, calls=30, warmup=2) == {}  # every model folder missing


def test_distill_section_times_its_models_in_turns(bench, tiny_model_dir, tmp_path):
    from benchmarks.distill import measure_models

    rows = measure_models({"ensemble": tiny_model_dir, "student": tiny_model_dir}, tmp_path / "cache")
    got = {(r["metric"], r["model"]): r for r in rows}
    assert set(got) == {(m, n) for m in ("latency_b1", "throughput_b32", "size") for n in ("ensemble", "student")}
    assert all(r["value"] > 0 for r in rows)
    assert got[("latency_b1", "student")]["details"]["timed"] == "in turns with ensemble, student"
