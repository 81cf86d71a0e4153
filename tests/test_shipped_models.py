"""The README quickstart on each shipped model: `run` on the example photo labels one face plausibly,
through the TensorFlow Lite export it serves by default and through its Keras file (what
`evaluate`, `export`, `ensemble` and `distill` load), each in a fresh process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faceattr.labels import GENDERS, RACES

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "saved_model"


@pytest.mark.parametrize("backend", ["auto", "keras"])
@pytest.mark.parametrize("model_type", ["facenet", "normal"])
def test_quickstart_labels_the_astronaut(tmp_path, model_type, backend):
    folder = SHIPPED / model_type
    if not (folder / "model_info.json").is_file():
        pytest.skip(f"no shipped {model_type} model in {folder}")
    out = tmp_path / "out.csv"
    res = subprocess.run(
        [sys.executable, "src/main.py", "run", "--img", "examples/astronaut.jpg", "--no-display", "--output", str(out),
         f"hydra.run.dir={tmp_path / 'run'}", "--model_type", model_type, f"run.backend={backend}"],
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
