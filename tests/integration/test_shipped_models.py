"""The README quickstart on each shipped model: `run` on the example photo labels one face
plausibly through the TensorFlow Lite export it serves, in a fresh process; and each shipped
model's Keras file (what `evaluate`, `export`, `ensemble`, `distill` and `run.backend=keras`
load) loads in a fresh process and agrees with that export."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import new_cache
from faceattr.labels import GENDERS, RACES

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "saved_model"
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
#: Run in a fresh interpreter: each shipped model through its Keras file and through its export,
#: on the example photo resized to the model's input; prints one JSON line per model.
BOTH_BACKENDS = """
import json, sys
import cv2
from faceattr.inference.predictor import Predictor
cache, image = sys.argv[1], cv2.cvtColor(cv2.imread(sys.argv[2]), cv2.COLOR_BGR2RGB)
for folder in sys.argv[3:]:
    out = {}
    for backend in ("keras", "tflite"):
        predictor = Predictor.load(folder, cache, backend=backend)
        out[backend] = {k: v.tolist() for k, v in predictor.predict_arrays(predictor.prepare([image])).items()}
    print(json.dumps(out))
"""


def shipped(model_type: str) -> Path:
    folder = SHIPPED / model_type
    if not (folder / "model_info.json").is_file():
        pytest.skip(f"no shipped {model_type} model in {folder}")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["facenet", "cnn"])
def test_quickstart_labels_the_astronaut(tmp_path, model_type):
    folder = shipped(model_type)
    out = tmp_path / "out.csv"
    res = subprocess.run(
        [sys.executable, "src/main.py", "run", "--img", "examples/astronaut.jpg", "--no-display", "--output", str(out),
         f"hydra.run.dir={tmp_path / 'run'}", "--model_type", model_type],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1, rows
    face = rows[0]
    info = json.loads((folder / "model_info.json").read_text())
    assert 15 <= float(face["age"]) <= 70, face
    assert face["gender"] in GENDERS and face["gender"] in info["genders"], face
    assert face["race"] in RACES and face["race"] in info["races"], face
    assert 0.0 < float(face["gender_confidence"]) <= 1.0 and 0.0 < float(face["race_confidence"]) <= 1.0, face
    assert face["aligned"] == "True", face



def test_the_shipped_cnn_is_found_by_its_name_and_its_former_one():
    """saved_model/cnn says ``model_type: cnn``; ``model=cnn`` and the former ``model=normal`` both
    find it (a folder saved as ``normal`` is read as cnn: tests/unit/test_models.py)."""
    from faceattr.config import compose_config
    from faceattr.models import io
    from faceattr.models.info import ModelInfo

    folder = shipped("cnn")
    assert json.loads((folder / "model_info.json").read_text())["model_type"] == "cnn"
    assert ModelInfo.read(folder).model_type == "cnn"
    for model in ("cnn", "normal"):
        assert io.resolve_model_dir(compose_config(["command=run", f"model={model}"])) == folder


@pytest.mark.slow
def test_every_shipped_keras_file_loads_in_a_fresh_process_and_agrees_with_its_export(tmp_path, facenet_weights):
    """A fresh process registers every custom layer a shipped file names (a loaded test module
    would hide a missing import); Keras and the dynamic-range export give close outputs."""
    folders = [shipped(name) for name in ("facenet", "cnn")]
    res = subprocess.run(
        [sys.executable, "-c", BOTH_BACKENDS, str(new_cache(tmp_path / "cache", facenet_weights)), str(ASTRONAUT),
         *map(str, folders)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT / "src")})
    assert res.returncode == 0, res.stderr[-3000:]
    for folder, line in zip(folders, res.stdout.strip().splitlines(), strict=True):
        out = json.loads(line)
        keras, lite = out["keras"], out["tflite"]
        assert abs(keras["age"][0] - lite["age"][0]) < 3.0, (folder, keras["age"], lite["age"])
        for task in ("gender", "race"):
            assert max(abs(a - b) for a, b in zip(keras[task][0], lite[task][0], strict=True)) < 0.1, (folder, task)
        assert 0 < keras["age"][0] < 116, folder
