"""``evaluate --labels``: labelled photo folders through run's face pipeline, and the decision
rules fitted on validation predictions (``models.calibration``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from faceattr.config import compose_config, group_node
from faceattr.data.labels_csv import read_labels
from faceattr.errors import InputError
from faceattr.evaluation.photos import (
    _tile_text,
    age_by_group_frame,
    confident_mistakes,
    evaluate_photos,
    interval_error,
)
from faceattr.models import io
from faceattr.models.calibration import Calibration, adjust_probabilities, fit_age_map, fit_race_bias, map_ages
from faceattr.models.cnn import build_cnn
from faceattr.models.info import ModelInfo

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
FAIRFACE_DEV = ROOT.parent / "shared" / "data" / "external" / "fairface-dev"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    cfg = OmegaConf.merge(group_node("model", "cnn"),
                          {"input_size": 32, "filters": [8, 16], "heads": {"hidden_units": [8]}})
    model_dir = tmp_path_factory.mktemp("tiny_model")
    io.save_model(model_dir, ModelInfo(model_type="cnn", input_size=32), build_cnn(cfg))
    return model_dir


def compose_cfg(*overrides: str):
    return compose_config(["command=evaluate", *overrides])


def labelled_folder(folder: Path) -> Path:
    """Three photos: the astronaut (exact age), a smaller copy (age group) and a blank (no face)."""
    folder.mkdir(parents=True)
    image = cv2.imread(str(ASTRONAUT))
    cv2.imwrite(str(folder / "a.jpg"), image)
    cv2.imwrite(str(folder / "b.png"), cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(folder / "blank.png"), np.full((200, 200, 3), 128, np.uint8))
    pd.DataFrame({"file": ["a.jpg", "b.png", "blank.png"], "age": ["40", "", ""], "age_lo": ["", "30", "70"],
                  "age_hi": ["", "39", ""], "gender": ["female", "1", ""], "race": ["white", "", "others"]}
                 ).to_csv(folder / "labels.csv", index=False)
    return folder


def test_read_labels_exact_ages_groups_and_empty_cells(tmp_path):
    folder = labelled_folder(tmp_path / "photos")
    labels = read_labels(folder)
    assert labels["path"].tolist() == [str(folder / f) for f in ("a.jpg", "b.png", "blank.png")]
    assert labels["age_lo"].tolist() == [40, 30, 70] and labels["age_hi"].tolist()[:2] == [40, 39]
    assert math.isinf(labels["age_hi"].iloc[2]) and math.isnan(labels["age"].iloc[1])
    assert labels["gender"].tolist() == [1, 1, -1] and labels["race"].tolist() == [0, -1, 4]


@pytest.mark.parametrize("content, message", [
    ("name,age\na.jpg,3\n", "no 'file' column"),
    ("file,gender\na.jpg,robot\n", "row 2: gender 'robot' is not one of male, female"),
    ("file,age\na.jpg,old\n", "row 2: age 'old' is not a number of years"),
    ("file,age_lo,age_hi\na.jpg,30,20\n", "row 2: age_hi 20 is below age_lo 30"),
    ("file\n", "no labelled photos"),
])
def test_bad_labels_files_are_one_line(tmp_path, content, message):
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(InputError, match=message):
        read_labels(tmp_path)
    with pytest.raises(InputError, match="no such labels file"):
        read_labels(tmp_path / "missing")


def test_interval_error_and_age_groups():
    pred = np.array([25.0, 35.0, 45.0, 80.0, 10.0])
    lo = np.array([30.0, 30.0, 30.0, 70.0, 20.0])
    hi = np.array([39.0, 39.0, 39.0, math.inf, 29.0])
    assert interval_error(pred, lo, hi).tolist() == [-5.0, 0.0, 6.0, 0.0, -10.0]
    frame = age_by_group_frame(pred, lo, hi).set_index("group")
    assert frame.loc["30-39", "n"] == 3 and frame.loc["30-39", "signed_error"] == pytest.approx(1 / 3)
    assert frame.loc["30-39", "inside"] == pytest.approx(1 / 3) and frame.loc["70+", "interval_error"] == 0


@pytest.mark.slow
def test_evaluate_labels_on_a_small_folder(tmp_path, tiny_model_dir):
    folder = labelled_folder(tmp_path / "photos")
    cfg = compose_cfg(f"evaluation.labels='{folder}'", f"model_path='{tiny_model_dir}'")
    run_dir = tmp_path / "run"
    metrics = evaluate_photos(cfg, run_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    table = pd.read_csv(run_dir / "predictions.csv")
    assert saved["n"] == 3 and saved["n_no_face"] == 1 and saved["no_face_rate"] == pytest.approx(1 / 3)
    assert table["found"].tolist() == [True, True, False] and table["aligned"].iloc[:2].tolist() == [True, True]
    a, b = table.iloc[0], table.iloc[1]
    assert saved["age_mae"] == pytest.approx(abs(a["age_pred"] - 40), abs=1e-3)
    expected_interval = (abs(a["age_pred"] - 40) + abs(interval_error(b["age_pred"], 30, 39))) / 2
    assert saved["age_interval_error"] == pytest.approx(expected_interval, abs=1e-3)
    assert saved["gender_accuracy"] == pytest.approx(np.mean([p == "female" for p in table["gender_pred"][:2]]))
    assert saved["n_race"] == 1 and saved["race_accuracy"] == float(a["race_pred"] == "white")
    assert metrics["no_face_rate"] == saved["no_face_rate"] and "race_macro_f1" in saved
    for name in ("report_gender.csv", "report_race.csv", "confusion_race.png", "age_by_group.csv", "age_groups.png",
                 "age_by_bin.csv", "age_predictions.png", "fairness.csv", "fairness.png", "faces_grid.png"):
        assert (run_dir / name).is_file(), name
    # the mistakes grid exists exactly when the tiny model got a labelled gender or race wrong
    wrong = confident_mistakes(table[table["found"]])
    assert (run_dir / "faces_mistakes.png").is_file() == (not wrong.empty)


def test_confident_mistakes_and_tile_titles():
    found = pd.DataFrame({
        "age": [40.0, math.nan, math.nan, math.nan], "age_lo": [40.0, 30.0, 70.0, math.nan],
        "age_hi": [40.0, 39.0, math.inf, math.nan], "gender": [1, 0, -1, 1], "race": [0, 2, 4, -1],
        "age_pred": [44.0, 52.0, 60.0, 5.0], "gender_pred": ["female", "female", "male", "female"],
        "race_pred": ["black", "asian", "others", "white"], "gender_confidence": [0.9, 0.6, 0.7, 0.8],
        "race_confidence": [0.55, 0.8, 0.9, 0.99]})
    wrong = confident_mistakes(found)
    # row 1: gender wrong at 60 %; row 0: race wrong at 55 %; rows 2, 3 have nothing wrong that is labelled
    assert wrong.index.tolist() == [1, 0]
    title, right = _tile_text(found.iloc[0])
    assert title == "true: 40 y, female, white\npred: 44 y, female 90%, black 55%" and not right
    title, right = _tile_text(found.iloc[2])
    assert title.startswith("true: 70+ y, ?, others") and right  # 10 years below the group: still right
    assert not _tile_text(found.iloc[1])[1]  # 13 years above 30-39, and the gender wrong
    assert _tile_text(found.iloc[3]) == ("true: ? y, female, ?\npred: 5 y, female 80%, white 99%", True)


@pytest.mark.slow
def test_cli_evaluate_labels_bad_folder_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "evaluate", "--labels",
                           str(tmp_path / "nowhere"), f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'}: no such labels file "
                                               "(give a folder holding labels.csv, or the CSV)"]


@pytest.mark.skipif(not FAIRFACE_DEV.is_dir(), reason=f"{FAIRFACE_DEV} absent (external development photos)")
def test_fairface_dev_labels_read():
    labels = read_labels(FAIRFACE_DEV)
    assert len(labels) == 270 and (labels["gender"] >= 0).all() and (labels["race"] >= 0).all()
    assert labels["age"].isna().all() and labels["age_lo"].notna().all()


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------
def test_calibration_round_trip_and_identity():
    out = {"age": np.array([5.0, 50.0]), "race": np.array([[0.7, 0.1, 0.1, 0.05, 0.05]]), "gender": np.ones((1, 2))}
    same = Calibration().apply(out)
    assert np.array_equal(same["age"], out["age"]) and np.array_equal(same["race"], out["race"])
    cal = Calibration((0.0, 0.0, 0.0, 0.0, 3.0), ((10.0, 50.0), (5.0, 60.0)))
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    res = cal.apply(out)
    assert res["race"][0].argmax() == 4 and res["race"].sum() == pytest.approx(1.0)
    assert map_ages(np.array([0.0, 10.0, 30.0, 50.0, 70.0]), *cal.age_map).tolist() == [-5.0, 5.0, 32.5, 60.0, 80.0]


def test_race_bias_lifts_a_rare_class_on_validation_predictions():
    rng = np.random.default_rng(0)
    y = np.concatenate([np.zeros(900, int), np.full(100, 4)])
    # A model that leans to the common class: the rare one gets only a slight edge when true.
    logits = rng.normal(0, 1, (1000, 5))
    logits[:, 0] += 1.5
    logits[y == 4, 4] += 1.8
    probs = adjust_probabilities(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), np.zeros(5))
    bias, tau, rows = fit_race_bias(probs, y, max_accuracy_drop=0.05)
    before, after = rows[0], next(r for r in rows if r["tau"] == tau)
    assert tau > 0 and after["recall_4"] > before["recall_4"] + 0.2
    assert after["balanced_accuracy"] > before["balanced_accuracy"] and after["accuracy"] >= before["accuracy"] - 0.05
    assert bias[4] > bias[0] == 0.0


def test_race_bias_holds_the_accuracy_of_every_source():
    """Two sources: the rare class is common in one (where lifting it pays) and rare in the other
    (where it costs). Over the mix the accuracy rises; within the second source it falls, so a
    rule held per source lifts the rare class less."""
    rng = np.random.default_rng(1)
    y = np.concatenate([np.zeros(500, int), np.full(500, 4), np.zeros(950, int), np.full(50, 4)])
    groups = np.array(["photos"] * 1000 + ["chips"] * 1000, dtype=object)
    logits = rng.normal(0, 1, (2000, 5))
    logits[:, 0] += 1.5
    logits[y == 4, 4] += 1.6
    probs = adjust_probabilities(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), np.zeros(5))
    _, tau_mix, rows = fit_race_bias(probs, y, max_accuracy_drop=0.003)
    _, tau_each, rows_each = fit_race_bias(probs, y, max_accuracy_drop=0.003, groups=groups)
    chosen = next(r for r in rows_each if r["tau"] == tau_each)
    assert tau_each < tau_mix
    assert chosen["accuracy_chips"] >= rows_each[0]["accuracy_chips"] - 0.003
    assert next(r for r in rows_each if r["tau"] == tau_mix)["accuracy_chips"] < rows_each[0]["accuracy_chips"] - 0.003


def test_age_map_removes_the_pull_toward_the_middle():
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 90, 4000)
    pred = 38 + 0.7 * (true - 38) + rng.normal(0, 3, 4000)  # shrunk toward 38
    knots, share, rows = fit_age_map(pred, true, max_mae_increase=0.5)
    assert knots is not None and share > 0.5
    mapped = map_ages(pred, *knots)
    young, old = true < 15, true > 70
    assert abs(np.mean(mapped[young] - true[young])) < abs(np.mean(pred[young] - true[young])) / 3
    assert abs(np.mean(mapped[old] - true[old])) < abs(np.mean(pred[old] - true[old])) / 3
    assert np.mean(np.abs(mapped - true)) < np.mean(np.abs(pred - true))
