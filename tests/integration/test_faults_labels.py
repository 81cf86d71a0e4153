"""Damaged label files around ``evaluate --labels`` and labelled training sources: impossible
ages, duplicate rows, folders where no photo reads; one line naming the file and row, and a
``metrics.json`` that stays valid JSON whatever the figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import main_py, one_error_line
from faceattr import writes
from faceattr.data.labelled import index_labelled
from faceattr.data.labels_csv import read_labels
from faceattr.errors import InputError
from faceattr.evaluation.report import write_evaluation

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_NORMAL = ROOT / "saved_model" / "cnn"
EDGES = [0, 10, 20, 30, 40, 60, 80, math.inf]


def strict_json(path: Path):
    """Parse ``path`` as JSON the way strict readers (browsers, jq, other languages) do."""
    def refuse(name: str):
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def labelled(folder: Path, rows: list[str], header: str = "file,age,gender,race") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        cv2.imwrite(str(folder / name), np.full((16, 16, 3), 100 + len(name), np.uint8))
    (folder / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return folder


# ------------------------------------------------------------------------------ (6) ages
@pytest.mark.parametrize("column, value, problem", [
    ("age", "inf", "'inf' is not a finite number of years"),
    ("age", "-Infinity", "is not a finite number of years"),
    ("age", "1e6", "1e+06 is above 130 years"),
    ("age", "131", "131 is above 130 years"),
    ("age_hi", "inf", "age_hi 'inf' is not a finite number of years"),
    ("age_lo", "1e6", "age_lo 1e+06 is above 130 years"),
])
def test_impossible_ages_are_one_line_naming_file_and_row(tmp_path, column, value, problem):
    header = "file,age,gender,race" if column == "age" else "file,age_lo,age_hi,gender,race"
    good = "a.jpg,30,male,white" if column == "age" else "a.jpg,20,29,male,white"
    bad = {"age": f"b.jpg,{value},male,white", "age_lo": f"b.jpg,{value},,male,white",
           "age_hi": f"b.jpg,20,{value},male,white"}[column]
    folder = labelled(tmp_path / "photos", [good, bad], header)
    with pytest.raises(InputError) as err:
        read_labels(folder)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{folder / 'labels.csv'}: row 3: ") and problem in message


def test_ages_at_the_bounds_are_kept(tmp_path):
    folder = labelled(tmp_path / "photos", ["a.jpg,0,male,white", "b.jpg,130,female,black"])
    assert read_labels(folder)["age"].tolist() == [0, 130]


@pytest.mark.slow
def test_evaluate_refuses_an_infinite_age_before_any_model_loads(tmp_path):
    folder = labelled(tmp_path / "photos", ["a.jpg,30,male,white", "b.jpg,inf,male,white"])
    res = main_py("evaluate", "--labels", folder, "evaluation.plots=false", f"hydra.run.dir={tmp_path / 'run'}",
                  cwd=tmp_path, timeout=300)
    line = one_error_line(res)
    assert f"{folder / 'labels.csv'}: row 3: age 'inf'" in line
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_metrics_json_holds_no_infinity_or_nan(tmp_path):
    """A model that predicts infinite ages (a broken export, say) still leaves valid JSON: null."""
    n = 12
    rng = np.random.default_rng(0)
    faces = []
    for i in range(n):
        path = tmp_path / "faces" / f"{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), np.full((16, 16, 3), 10 * i, np.uint8))
        faces.append(str(path))
    frame = pd.DataFrame({"image": [f"{20 + i}_{i % 2}_{i % 5}_{i}.jpg" for i in range(n)], "path": faces,
                          "age": 20.0 + np.arange(n), "gender": np.arange(n) % 2, "race": np.arange(n) % 5,
                          "split": "test"})
    predictions = {"age": np.full(n, np.inf), "gender": rng.dirichlet([1, 1], n), "race": rng.dirichlet([1] * 5, n)}
    write_evaluation(tmp_path / "run", frame, predictions, OmegaConf.create({"plots": False}), EDGES)
    metrics = strict_json(tmp_path / "run" / "metrics.json")
    assert metrics["age_mae"] is None and metrics["split"] == "test"


def test_json_text_replaces_every_non_finite_number():
    text = writes.json_text({"a": math.inf, "b": [math.nan, 1.5, np.float32("-inf")], "c": {"d": np.float64("nan")}})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(name)) == {
        "a": None, "b": [None, 1.5, None], "c": {"d": None}}


# ------------------------------------------------------------------------------ (7) nothing read
@pytest.mark.slow
def test_evaluate_exits_non_zero_when_no_photo_could_be_read(tmp_path):
    if not (SHIPPED_NORMAL / "model.tflite").is_file():
        pytest.skip("needs the shipped saved_model/cnn/model.tflite")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(b"not an image at all")
    (folder / "labels.csv").write_text("file,age,gender,race\na.jpg,30,male,white\nb.jpg,40,female,black\n")
    res = main_py("evaluate", "--labels", folder, "--model_type", "cnn", "detector=none", "evaluation.plots=false",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=300)
    assert "Traceback" not in res.stderr and res.returncode == 2, (res.returncode, res.stderr[-3000:])
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert [line.split(": ")[1] for line in lines[:-1]] == [str(folder / "a.jpg"), str(folder / "b.jpg")]
    assert lines[-1] == f"error: {folder}: none of its 2 photo(s) could be read (the reason for each is printed " \
                        "above); nothing was scored"
    assert not (tmp_path / "run" / "metrics.json").exists()


# ------------------------------------------------------------------------------ (8) duplicates
@pytest.mark.parametrize("rows, row, earlier, name", [
    (["a.jpg,30,male,white", "b.jpg,40,female,black", "a.jpg,30,male,white"], 4, 2, "a.jpg"),
    (["a.jpg,30,male,white", "b.jpg,40,female,black", "./b.jpg,45,male,asian"], 4, 3, "./b.jpg"),
])
def test_duplicate_rows_are_refused_naming_both_rows(tmp_path, rows, row, earlier, name):
    folder = labelled(tmp_path / "photos", rows)
    with pytest.raises(InputError) as err:
        read_labels(folder)
    message = str(err.value)
    assert message == f"{folder / 'labels.csv'}: row {row}: {name} is listed twice (also row {earlier})"


@pytest.mark.slow
def test_evaluate_and_training_sources_refuse_duplicates_alike(tmp_path):
    folder = labelled(tmp_path / "photos", ["a.jpg,30,male,white", "b.jpg,40,female,black", "a.jpg,31,female,white"])
    with pytest.raises(InputError) as for_training:
        index_labelled(folder, "lab", EDGES)
    res = main_py("evaluate", "--labels", folder, "evaluation.plots=false", f"hydra.run.dir={tmp_path / 'run'}",
                  cwd=tmp_path, timeout=300)
    assert one_error_line(res) == f"error: {for_training.value}"
    assert "row 4: a.jpg is listed twice (also row 2)" in str(for_training.value)
