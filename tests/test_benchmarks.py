"""benchmarks/run.py at --quick settings on a tiny real CNN (the shipped models may not exist yet)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from faceattr.config import group_node
from faceattr.models import io
from faceattr.models.cnn import build_cnn
from faceattr.models.export import export_tflite

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run.py"
TINY_SIZE = 32


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
    cfg = OmegaConf.merge(group_node("model", "normal"),
                          {"input_size": TINY_SIZE, "filters": [8, 16], "heads": {"hidden_units": [8]}})
    model_dir = tmp_path_factory.mktemp("bench_model") / "model"
    io.save_model(model_dir, io.ModelInfo(model_type="normal", input_size=TINY_SIZE), build_cnn(cfg))
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
def test_quick_run_measures_normal_and_the_baseline(tmp_path, tiny_model_dir):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--models", "normal", "--model-dir", f"normal={tiny_model_dir}",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "latency_b1" in proc.stdout and f"Results written to {out}" in proc.stdout

    result = json.loads(out.read_text())
    machine = result["machine"]
    for key in ("cpu_model", "cores", "ram_gib", "python", "tensorflow", "date"):
        assert machine[key], key
    assert machine["cores"] >= 1 and machine["ram_gib"] > 0
    assert result["settings"]["quick"] is True
    assert result["models"]["normal"]["present"] is True

    rows = {(r["metric"], r["model"]): r for r in result["rows"]}
    assert not any(r["model"] == "facenet" for r in result["rows"])  # --models normal
    measured = [("latency_b1", "normal"), ("throughput_b32", "normal"), ("run_img_cold", "normal"),
                ("video_fps", "normal"), ("train_images_per_s", "normal"), ("latency_b1_keras", "normal"),
                ("throughput_b32_keras", "normal")]
    baseline = [("latency_b1", "frozen_graph"), ("throughput_b32", "frozen_graph")]
    for key in measured + (baseline if _graph_available() else []):
        row = rows[key]
        assert row["status"] == "ok", (key, row["note"])
        assert isinstance(row["value"], int | float) and row["value"] > 0, key
    for key in baseline if not _graph_available() else []:
        assert rows[key]["status"] == "skipped" and rows[key]["note"]

    # What `run` serves (the export) is what the targeted rows measure; Keras is beside it.
    for metric in ("latency_b1", "throughput_b32", "video_fps"):
        assert rows[metric, "normal"]["details"]["backend"] == "tflite", metric
    assert rows["latency_b1_keras", "normal"]["details"]["backend"] == "keras"
    assert rows["latency_b1_keras", "normal"]["target"] is None

    # Targets and verdicts where the issue sets them, none elsewhere.
    assert rows["latency_b1", "normal"]["target"] == "<= 5"
    assert rows["video_fps", "normal"]["target"] == ">= 25"
    assert rows["run_img_cold", "normal"]["target"] == "<= 8"
    for key in ("latency_b1", "video_fps", "run_img_cold"):  # the verdict is the value against the target
        row = rows[key, "normal"]
        op, limit = row["target"].split()
        assert row["pass"] is (row["value"] <= float(limit) if op == "<=" else row["value"] >= float(limit)), row
    assert rows["throughput_b32", "normal"]["target"] is None and rows["throughput_b32", "normal"]["pass"] is None

    # The pipelines really saw faces: one in the photo, two per video frame.
    assert rows["run_img_cold", "normal"]["details"]["faces"] == 1
    video = rows["video_fps", "normal"]["details"]
    assert video["frames"] == result["settings"]["video_frames"] and video["resolution"] == "640x480"
    assert video["faces_per_frame"] >= 1.5
    # With run's default refresh, the model sees fewer faces than are tracked; with 1, all of them.
    every = rows["video_fps_refresh1", "normal"]["details"]
    assert every["refresh_every"] == 1 and every["model_faces_per_frame"] == pytest.approx(every["faces_per_frame"])
    if video["refresh_every"] > 1:
        assert video["model_faces_per_frame"] < video["faces_per_frame"]

    # The tiny model has no training log: skipped, with the reason and the way out.
    shipped = rows["shipped_train_seconds", "normal"]
    assert shipped["status"] == "skipped" and "--train-summary" in shipped["note"]


@pytest.mark.parametrize("metric, value, expected", [("latency_b1", 4.0, True), ("latency_b1", 5.0, True),
                                                     ("latency_b1", 5.5, False), ("video_fps", 30.0, True),
                                                     ("video_fps", 24.0, False)])
def test_verdict_compares_the_value_with_its_target(bench, metric, value, expected):
    assert bench.Row(metric, "normal", value, "unit").as_json()["pass"] is expected
    assert bench.Row(metric, "normal", value, "unit", status="error").as_json()["pass"] is None
    assert bench.Row("throughput_b32", "normal", value, "unit").as_json()["pass"] is None  # no target


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
