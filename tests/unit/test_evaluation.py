"""Evaluation: metrics against hand-computed numbers, the files an evaluation writes, the
fairness table, sweep summaries (function, Hydra callback, ``compare``) and the notebook.

Everything is synthetic and small; no model or dataset is needed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from faceattr.errors import InputError
from faceattr.evaluation import plots
from faceattr.evaluation.fairness import fairness_frame
from faceattr.evaluation.metrics import (
    age_by_bin_frame,
    age_report_frame,
    classification_report_frame,
    compute_metrics,
)
from faceattr.evaluation.report import OUTPUT_FILES, write_evaluation
from faceattr.evaluation.sweep import SweepSummaryCallback, compare_runs, summarize_runs, write_sweep_summary
from faceattr.labels import GENDERS, RACES, age_bin_labels

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "explore_runs.ipynb"
REQUIRED_METRICS = ("age_mae", "age_rmse", "age_r2", "gender_accuracy", "race_accuracy", "race_macro_f1", "n")


def one_hot(idx: list[int], n: int, p: float = 0.9) -> np.ndarray:
    """Probabilities (N, n) putting ``p`` on the given classes."""
    out = np.full((len(idx), n), (1 - p) / (n - 1))
    out[np.arange(len(idx)), idx] = p
    return out


# ---------------------------------------------------------------------------- metrics


def test_perfect_predictions():
    y_true = {"age": np.array([5.0, 25.0, 70.0]), "gender": np.array([0, 1, 0]), "race": np.array([0, 3, 4])}
    y_pred = {"age": y_true["age"].copy(), "gender": one_hot([0, 1, 0], 2), "race": one_hot([0, 3, 4], 5)}
    m = compute_metrics(y_true, y_pred)
    assert set(REQUIRED_METRICS) <= set(m)
    assert m["age_mae"] == 0 and m["age_rmse"] == 0 and m["age_r2"] == 1
    assert m["gender_accuracy"] == 1 and m["race_accuracy"] == 1 and m["race_macro_f1"] == 1
    assert m["age_within_5"] == 1 and m["n"] == 3
    json.dumps(m)  # plain Python numbers


def test_metrics_match_hand_computed_example():
    y_true = {"age": np.array([10.0, 20.0, 30.0, 40.0]), "gender": np.array([0, 0, 1, 1]),
              "race": np.array([0, 1, 2, 2])}
    y_pred = {"age": np.array([12.0, 18.0, 30.0, 50.0]), "gender": one_hot([0, 1, 1, 1], 2),
              "race": one_hot([0, 1, 2, 0], 5)}
    m = compute_metrics(y_true, y_pred)
    # errors 2, -2, 0, 10
    assert m["age_mae"] == pytest.approx(3.5)
    assert m["age_rmse"] == pytest.approx(math.sqrt(108 / 4))
    assert m["age_bias"] == pytest.approx(2.5)
    assert m["age_r2"] == pytest.approx(1 - 108 / 500)
    assert m["age_within_5"] == pytest.approx(0.75) and m["age_within_10"] == pytest.approx(1.0)
    assert m["gender_accuracy"] == pytest.approx(0.75)
    assert m["gender_macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # F1 male 2/3, female 0.8
    assert m["race_accuracy"] == pytest.approx(0.75)
    # macro over the 3 races present: F1 white 2/3, black 1, asian 2/3
    assert m["race_macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert m["race_balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["n"] == 4


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="length"):
        compute_metrics({"age": np.zeros(3), "gender": np.zeros(3), "race": np.zeros(3)},
                        {"age": np.zeros(2), "gender": np.zeros((3, 2)), "race": np.zeros((3, 5))})


def test_classification_report_frame():
    report = classification_report_frame("race", np.array([0, 1, 2, 2]), one_hot([0, 1, 2, 0], 5))
    assert list(report.columns) == ["class", "precision", "recall", "f1", "support"]
    assert list(report["class"]) == [*RACES, "macro avg", "weighted avg"]
    row = report.set_index("class")
    assert row.loc["white", "precision"] == pytest.approx(0.5) and row.loc["white", "recall"] == 1
    assert row.loc["asian", "recall"] == pytest.approx(0.5) and row.loc["asian", "support"] == 2
    assert row.loc["others", "support"] == 0
    assert row.loc["macro avg", "f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert row.loc["weighted avg", "support"] == 4
    gender = classification_report_frame("gender", np.array([0, 1]), np.array([0, 0]))  # indices work too
    assert list(gender["class"]) == [*GENDERS, "macro avg", "weighted avg"]


def test_age_reports_per_bin():
    edges = [0, 20, 40, float("inf")]
    t, p = np.array([5.0, 15.0, 25.0, 90.0]), np.array([7.0, 15.0, 35.0, 80.0])
    by_bin = age_by_bin_frame(t, p, edges)
    assert list(by_bin["bin"]) == age_bin_labels(edges) == ["0-20", "20-40", "40+"]
    assert list(by_bin["n"]) == [2, 1, 1]
    assert list(by_bin["mae"]) == pytest.approx([1.0, 10.0, 10.0])
    assert list(by_bin["signed_error"]) == pytest.approx([1.0, 10.0, -10.0])
    report = age_report_frame(t, p, edges)
    assert list(report["group"]) == ["all", "0-20", "20-40", "40+"]
    assert {"n", "mae", "rmse", "r2", "within_5", "within_10"} <= set(report.columns)
    assert report.iloc[0]["mae"] == pytest.approx(22 / 4) and report.iloc[0]["within_5"] == pytest.approx(0.5)
    empty_bin = age_by_bin_frame(t, p, [0, 10, 50, 60, float("inf")])
    assert empty_bin.loc[empty_bin["bin"] == "50-60", "n"].item() == 0  # empty bins are kept


# ---------------------------------------------------------------------------- write_evaluation


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    """60 test rows with small JPEG faces, predictions and a training history."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    n = 60
    age = rng.integers(1, 90, n).astype(float)
    gender = rng.integers(0, 2, n)
    race = rng.integers(0, 5, n)
    paths = []
    for i in range(n):
        img = np.full((32, 32, 3), (40 * (i % 6), 120, 200), dtype=np.uint8)
        cv2.circle(img, (16, 16), 10, (180, 170, 160), -1)
        path = root / "faces" / f"{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), img)
        paths.append(str(path))
    names = [f"{int(a)}_{g}_{r}_{i}.jpg" for i, (a, g, r) in enumerate(zip(age, gender, race, strict=True))]
    frame = pd.DataFrame({"image": names,
                          "path": paths, "age": age, "gender": gender, "race": race, "split": "test"},
                         index=np.arange(100, 100 + n))  # a non-default index, as a filtered split has
    flip = rng.random(n) < 0.2
    predictions = {"age": age + rng.normal(0, 5, n),
                   "gender": one_hot(list(np.where(flip, 1 - gender, gender)), 2, 0.8),
                   "race": one_hot(list(np.where(rng.random(n) < 0.3, (race + 1) % 5, race)), 5, 0.6)}
    epochs = 6
    history = pd.DataFrame({"epoch": range(epochs), "loss": np.linspace(3, 1, epochs),
                            "val_loss": np.linspace(3.2, 1.5, epochs), "age_mae": np.linspace(15, 8, epochs),
                            "val_age_mae": np.linspace(16, 9, epochs), "gender_accuracy": np.linspace(0.6, 0.9, epochs),
                            "val_gender_accuracy": np.linspace(0.6, 0.85, epochs),
                            "race_accuracy": np.linspace(0.4, 0.8, epochs)})  # no val_race_accuracy: tolerated
    history.to_csv(root / "history.csv", index=False)
    return {"root": root, "frame": frame, "predictions": predictions, "history": root / "history.csv"}


@pytest.fixture(scope="module")
def evaluated(synthetic) -> tuple[Path, dict]:
    out = synthetic["root"] / "run"
    metrics = write_evaluation(out, synthetic["frame"], synthetic["predictions"],
                               OmegaConf.create({"formats": ["png", "svg"], "dpi": 60, "grid_faces": 16}),
                               age_bin_edges=[0, 10, 20, 30, 40, 60, 80, float("inf")],
                               history_csv=synthetic["history"])
    return out, metrics


@pytest.mark.slow
def test_write_evaluation_writes_every_file(evaluated, synthetic):
    out, metrics = evaluated
    expected = ("metrics.json", "report_gender.csv", "report_race.csv", "report_age.csv", "age_by_bin.csv",
                "confusion_gender.png", "confusion_race.png", "age_predictions.png", "faces_grid.png",
                "fairness.csv", "fairness.png", "predictions.csv", "training_curves.png")
    assert set(OUTPUT_FILES) | {"training_curves.png"} == set(expected)
    for name in expected:
        assert (out / name).is_file(), name
    for name in ("confusion_gender.png", "confusion_race.png", "fairness.png", "faces_grid.png"):
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 200 and img.shape[1] > 200, name
    saved = json.loads((out / "metrics.json").read_text())
    assert set(REQUIRED_METRICS) <= set(saved) and saved["n"] == 60 and "n_test" not in saved
    assert saved.pop("split") == "test" and saved == pytest.approx(metrics)  # which split, then the numbers
    assert metrics == pytest.approx(compute_metrics(
        {k: synthetic["frame"][k].to_numpy() for k in ("age", "gender", "race")}, synthetic["predictions"]))
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 60 and list(preds["image"]) == list(synthetic["frame"]["image"])
    assert {"age_true", "age_pred", "gender_true", "gender_pred", "race_true", "race_pred"} <= set(preds.columns)
    assert set(preds["race_true"]) <= set(RACES)
    assert list(pd.read_csv(out / "report_race.csv")["class"])[:5] == list(RACES)
    assert list(pd.read_csv(out / "age_by_bin.csv")["n"]) == list(
        pd.read_csv(out / "report_age.csv")["n"].iloc[1:])


@pytest.mark.slow
def test_validation_evaluation_names_its_split_and_count(synthetic, tmp_path):
    rows = synthetic["frame"].iloc[:12]
    predictions = {k: np.asarray(v)[:12] for k, v in synthetic["predictions"].items()}
    write_evaluation(tmp_path, rows, predictions, OmegaConf.create({"formats": ["png", "svg"], "dpi": 40,
                                                                    "grid_faces": 0}), split="val")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["split"] == "val" and saved["n"] == 12 and "n_test" not in saved
    title = (tmp_path / "confusion_gender.svg").read_text()
    assert "confusion on the val split" in title and "test split" not in title


@pytest.mark.slow
def test_svg_written_when_configured(evaluated, tmp_path):
    out, _ = evaluated
    for name in ("confusion_gender", "confusion_race", "age_predictions", "faces_grid", "fairness",
                 "training_curves"):
        assert (out / f"{name}.svg").read_text().lstrip().startswith(("<?xml", "<svg")), name
    written = plots.plot_confusion("gender", np.array([0, 1, 1]), np.array([0, 1, 0]), tmp_path / "c", ["png"], 50)
    assert written == [tmp_path / "c.png"] and not (tmp_path / "c.svg").exists()


def test_training_curves_tolerate_missing_columns(tmp_path):
    only_loss = pd.DataFrame({"epoch": [0, 1, 2], "loss": [3.0, 2.0, 1.5], "age_loss": [9.0, 8.0, 7.0]})
    assert plots.plot_training_curves(only_loss, tmp_path / "curves", ["png"], 50) == [tmp_path / "curves.png"]
    assert plots.plot_training_curves(pd.DataFrame({"epoch": [0], "foo": [1]}), tmp_path / "none", ["png"]) == []


@pytest.mark.slow
def test_fairness_table_counts_and_mae(synthetic, evaluated):
    frame, pred = synthetic["frame"], synthetic["predictions"]
    table = pd.read_csv(evaluated[0] / "fairness.csv")
    expected = frame.assign(err=np.abs(pred["age"] - frame["age"].to_numpy()),
                            g_ok=pred["gender"].argmax(1) == frame["gender"].to_numpy(),
                            r_ok=pred["race"].argmax(1) == frame["race"].to_numpy())
    groups = expected.groupby(["race", "gender"])
    assert len(table) == groups.ngroups
    for (r, g), rows in groups:
        row = table[(table["race"] == RACES[r]) & (table["gender"] == GENDERS[g])]
        assert len(row) == 1
        assert row["n"].item() == len(rows)
        assert row["age_mae"].item() == pytest.approx(rows["err"].mean(), rel=1e-5)
        assert row["gender_accuracy"].item() == pytest.approx(rows["g_ok"].mean())
        assert row["race_accuracy"].item() == pytest.approx(rows["r_ok"].mean())
    assert table["n"].sum() == 60


def test_fairness_small_example():
    y_true = {"age": np.array([10.0, 20.0, 30.0]), "gender": np.array([0, 0, 1]), "race": np.array([0, 0, 1])}
    y_pred = {"age": np.array([12.0, 24.0, 30.0]), "gender": np.array([0, 1, 1]), "race": np.array([0, 0, 2])}
    table = fairness_frame(y_true, y_pred)
    assert list(zip(table["race"], table["gender"], strict=True)) == [("white", "male"), ("black", "female")]
    assert list(table["n"]) == [2, 1]
    assert list(table["age_mae"]) == pytest.approx([3.0, 0.0])
    assert list(table["gender_accuracy"]) == pytest.approx([0.5, 1.0])
    assert list(table["race_accuracy"]) == pytest.approx([1.0, 0.0])


# ---------------------------------------------------------------------------- sweeps


def make_run(folder: Path, overrides: list[str], metrics: dict | None = None, history: pd.DataFrame | None = None):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if history is not None:
        history.to_csv(folder / "history.csv", index=False)
    return folder


@pytest.fixture
def fake_sweep(tmp_path) -> Path:
    sweep = tmp_path / "multirun" / "train" / "2024-01-01" / "10-00-00"
    make_run(sweep / "0", ["command=train", "model=cnn", "train.learning_rate=0.001"],
             {"age_mae": 7.5, "gender_accuracy": 0.9, "race_accuracy": 0.8, "n_test": 60})
    make_run(sweep / "1", ["command=train", "model=cnn", "train.learning_rate=0.0001"],
             {"age_mae": 6.0, "gender_accuracy": 0.92, "race_accuracy": 0.75, "n_test": 60})
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_summarize_runs_two_runs(tmp_path):
    a = make_run(tmp_path / "a", ["command=train", "model=facenet", "train.epochs=3"],
                 {"age_mae": 7.0, "gender_accuracy": 0.9, "race_accuracy": 0.8, "n": 10, "split": "val"})
    b = make_run(tmp_path / "b", ["command=train", "model=cnn", "train.epochs=5"],  # written before ``n``
                 {"age_mae": 8.0, "gender_accuracy": 0.85, "race_accuracy": 0.7, "n_test": 12})
    df = summarize_runs([a, b])
    assert list(df["run"]) == [str(a), str(b)]
    assert list(df["model"]) == ["facenet", "cnn"] and list(df["train.epochs"]) == [3, 5]
    assert "command" not in df.columns
    assert list(df["age_mae"]) == [7.0, 8.0]
    assert list(df["n"]) == [10, 12] and "n_test" not in df.columns  # one count column, old runs included
    assert df["split"].iloc[0] == "val" and pd.isna(df["split"].iloc[1])
    written = write_sweep_summary(df, tmp_path / "out", ["png"], 60)
    back = pd.read_csv(written["summary"])
    assert len(back) == 2 and {"run", "model", "train.epochs", "age_mae", "race_accuracy"} <= set(back.columns)
    assert written["plot"] == tmp_path / "out" / "sweep_comparison.png" and written["plot"].is_file()


def test_summarize_runs_uses_best_validation_epoch_without_metrics(tmp_path):
    history = pd.DataFrame({"epoch": [0, 1, 2], "loss": [3, 2, 1], "val_loss": [3.0, 1.5, 2.0],
                            "val_age_mae": [12.0, 9.0, 10.0], "val_race_accuracy": [0.5, 0.7, 0.6]})
    run = make_run(tmp_path / "r", ["model=cnn"], history=history)
    row = summarize_runs([run]).iloc[0]
    assert row["val_loss"] == 1.5 and row["val_age_mae"] == 9.0 and row["best_epoch"] == 2
    assert "loss" not in row.index  # only the validation columns


def test_sweep_folder_is_expanded_in_job_order(fake_sweep):
    for i in range(2, 11):  # 10 must come after 2
        make_run(fake_sweep / str(i), ["model=cnn", f"seed={i}"])
    df = summarize_runs([fake_sweep])
    assert [Path(r).name for r in df["run"]] == [str(i) for i in range(11)]


def test_callback_writes_summary_into_the_sweep_dir(fake_sweep):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(fake_sweep)}},
                               "evaluation": {"formats": ["png", "svg"], "dpi": 60}})
    SweepSummaryCallback().on_multirun_end(config=config)
    summary = pd.read_csv(fake_sweep / "sweep_summary.csv")
    assert len(summary) == 2 and list(summary["train.learning_rate"]) == [0.001, 0.0001]
    assert (fake_sweep / "sweep_comparison.png").is_file() and (fake_sweep / "sweep_comparison.svg").is_file()


def test_callback_never_fails_the_sweep(tmp_path):
    callback = SweepSummaryCallback()
    callback.on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "missing")}}}))
    no_results = tmp_path / "sweep"
    make_run(no_results / "0", ["command=stats"])
    callback.on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(no_results)}}}))
    assert not (no_results / "sweep_summary.csv").exists()


def test_compare_command(fake_sweep, tmp_path, capsys):
    cfg = OmegaConf.create({"compare": {"dirs": [str(fake_sweep)]}, "evaluation": {"formats": ["png"], "dpi": 60}})
    result = compare_runs(cfg, tmp_path / "compare_run")
    assert result["runs"] == 2
    assert (tmp_path / "compare_run" / "sweep_summary.csv").is_file()
    assert (tmp_path / "compare_run" / "sweep_comparison.png").is_file()
    assert str(tmp_path / "compare_run") in capsys.readouterr().out
    with pytest.raises(InputError, match="no such folder") as err:
        compare_runs(OmegaConf.create({"compare": {"dirs": [str(tmp_path / "nope")]}}), tmp_path / "x")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_evaluate_command_scores_a_saved_model_on_the_split_saved_with_it(tmp_path):
    from conftest import make_fake_utkface
    from faceattr.config import compose_config, group_node
    from faceattr.evaluation.model_dir import evaluate_model
    from faceattr.models import io
    from faceattr.models.cnn import build_cnn
    from faceattr.models.info import ModelInfo

    paths = make_fake_utkface(tmp_path / "UTKFace", 30)
    model_cfg = OmegaConf.merge(group_node("model", "cnn"),
                                {"input_size": 32, "filters": [8], "heads": {"hidden_units": [8]}})
    model_dir = tmp_path / "model"
    io.save_model(model_dir, ModelInfo("cnn", 32, trained_with={"model": OmegaConf.to_container(model_cfg)}),
                  build_cnn(model_cfg))
    names = [p.name for p in paths]  # the model's own split: its 10 test faces, whatever the data config says
    pd.DataFrame({"image": names, "split": ["test"] * 10 + ["train"] * 20}).to_csv(model_dir / "split.csv",
                                                                                      index=False)
    cfg = compose_config(["command=evaluate", f"data.path={tmp_path / 'UTKFace'}", f"paths.cache={tmp_path / 'c'}",
                          f"model_path={model_dir}", "evaluation.grid_faces=4", "evaluation.dpi=40"])
    metrics = evaluate_model(cfg, tmp_path / "run")
    assert metrics["n"] == 10
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["split"] == "test"
    scored = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert sorted(scored["image"]) == sorted(names[:10])


# ---------------------------------------------------------------------------- notebook


@pytest.fixture
def kernel_env(tmp_path, monkeypatch) -> str:
    """A kernelspec that runs this interpreter, found before any user-level ``python3``."""
    name = "faceattr-test"
    spec = tmp_path / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "faceattr test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    return name


def run_notebook(kernel_name: str, cwd: Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=120,
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_notebook_is_saved_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.slow
def test_notebook_runs_on_a_run_and_a_sweep(evaluated, fake_sweep, kernel_env, tmp_path, monkeypatch):
    SweepSummaryCallback().on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(fake_sweep)}}}))
    monkeypatch.setenv("RUN_DIR", str(evaluated[0]))
    monkeypatch.setenv("SWEEP_DIR", str(fake_sweep))
    text = run_notebook(kernel_env, tmp_path)
    assert str(evaluated[0]) in text and "No sweep found" not in text


@pytest.mark.slow
def test_notebook_without_a_sweep(evaluated, kernel_env, tmp_path, monkeypatch):
    monkeypatch.setenv("RUN_DIR", str(evaluated[0]))
    monkeypatch.setenv("SWEEP_DIR", str(tmp_path / "no_sweep"))
    assert "No sweep found" in run_notebook(kernel_env, tmp_path)


@pytest.mark.slow
def test_notebook_falls_back_to_the_shipped_evaluations(evaluated, fake_sweep, kernel_env, tmp_path, monkeypatch):
    """A fresh clone has no runs under outputs/: the notebook shows the evaluations in statistics/."""
    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    (project / "conf" / "config.yaml").write_text("")
    (project / "outputs").mkdir()
    shipped = project / "statistics" / "normal"
    shutil.copytree(evaluated[0], shipped)
    summary = write_sweep_summary(summarize_runs([fake_sweep]), project / "statistics", ["png"], 40)
    monkeypatch.setenv("PROJECT_ROOT", str(project))
    monkeypatch.delenv("RUN_DIR", raising=False)
    monkeypatch.delenv("SWEEP_DIR", raising=False)
    text = run_notebook(kernel_env, tmp_path)
    assert f"run:     {shipped}\n" in text and "a shipped model's evaluation" in text
    assert f"sweep:   {summary['summary'].parent}\n" in text and "No sweep found" not in text
