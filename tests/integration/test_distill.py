"""``distill``: a student trained on a teacher's outputs, on synthetic faces.

A tiny CNN teacher is trained once per module (the toolkit's own family trainer, one epoch on
a fake UTKFace folder); ``distill`` runs as a user types it, with an unlabelled folder holding
a photo, a copy of a test-split face, an unreadable photo, an unreadable video and a short
video written with cv2.VideoWriter. ``detector=none`` makes each whole image one face, so
noise images stand in for faces. A private ``paths.cache`` keeps the teacher cache apart.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import built_once, make_fake_utkface, run_command
from faceattr.config import compose_config
from faceattr.data.targets import OPEN_END
from faceattr.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY_CNN = ["model.input_size=32", "model.filters=[8,16]", "model.heads.hidden_units=[16]"]


def main_py(*args: str, expect: int = 0, timeout: int = 900) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), *map(str, args)], capture_output=True,
                         text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == expect, f"{args}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def common(data: Path, cache: Path) -> list[str]:
    return [f"data.path={data}", f"paths.cache={cache}", "train.epochs=1", "train.batch_size=16",
            "export.tflite=false", *TINY_CNN]


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    assert path.stat().st_size > 0
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Fake data, a private cache and a one-epoch teacher with its split.csv (built once)."""
    def build(root: Path) -> None:
        from faceattr.data.prepare import prepare_dataset
        from faceattr.models.families import family

        data, cache, teacher_run = root / "UTKFace", root / "cache", root / "teacher"
        make_fake_utkface(data, 80)
        cfg = compose_config(["model=cnn", *common(data, cache)])
        prepared = prepare_dataset(cfg.data, cfg.rebalance, teacher_run)
        trainer = family("cnn").trainer(cfg)
        trainer.fit(prepared.frame, teacher_run)
        trainer.save(teacher_run / "model", trained_with=OmegaConf.to_container(cfg, resolve=True))
        shutil.copy(teacher_run / "split.csv", teacher_run / "model" / "split.csv")

    root = built_once(tmp_path_factory, "distill", build)
    return {"root": root, "data": root / "UTKFace", "cache": root / "cache", "teacher": root / "teacher" / "model",
            "split": pd.read_csv(root / "teacher" / "split.csv")}


@pytest.fixture(scope="module")
def distilled(setup, tmp_path_factory) -> dict:
    """One ``distill`` run over an unlabelled folder of good and bad files, and an empty folder (built once)."""
    root = built_once(tmp_path_factory, "distilled", lambda root: distill_once(setup, root))
    manifest = pd.read_csv(root / "run" / "manifest.csv", dtype={"reason": str})
    return {"run": root / "run", "stdout": (root / "output.txt").read_text(), "manifest": manifest,
            "unlabeled": root / "unlabeled"}


def distill_once(setup: dict, root: Path) -> None:
    split = setup["split"]
    unlabeled, empty = root / "unlabeled", root / "empty"
    unlabeled.mkdir()
    empty.mkdir()
    rng = np.random.default_rng(7)
    assert cv2.imwrite(str(unlabeled / "photo.jpg"), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    test_image = split[split.split == "test"].image.iloc[0]
    shutil.copy(setup["data"] / test_image, unlabeled / "copied_test_face.jpg")
    (unlabeled / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (unlabeled / "broken.mp4").write_bytes(b"not a video at all")
    first, second = (rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(2))
    write_video(unlabeled / "clip.avi", [first] * 6 + [second] * 6)  # two faces, each still for 6 frames
    run = root / "run"
    res = main_py("distill", "--teacher", setup["teacher"], *common(setup["data"], setup["cache"]), "detector=none",
                  "distill.min_confidence=0", "distill.video_stride=2", "distill.latency_faces=2",
                  "evaluation.plots=false", f"distill.unlabeled=[{unlabeled},{empty}]", f"hydra.run.dir={run}")
    (root / "output.txt").write_text(res.stdout + res.stderr)


def rows_of(manifest: pd.DataFrame, name: str) -> pd.DataFrame:
    return manifest[manifest.source.str.endswith(name)]


@pytest.mark.slow
def test_student_trains_and_loads_in_run(setup, distilled, tmp_path):
    run, model = distilled["run"], distilled["run"] / "model"
    for name in ("model.keras", "model_info.json", "split.csv", "history.csv", "train_summary.json"):
        assert (model / name).is_file(), name
    # The student carries the teacher's split: its test faces never trained or validated it.
    student_split = pd.read_csv(model / "split.csv").set_index("image")["split"]
    teacher_split = setup["split"].set_index("image")["split"]
    assert student_split.sort_index().equals(teacher_split.sort_index())
    report = json.loads((run / "distill_report.json").read_text())
    assert [m["model"] for m in report["models"]] == ["teacher", "student"]
    for row in report["models"]:
        assert row["n"] == (teacher_split == "test").sum() and row["latency_ms"] > 0 and row["keras_mb"] > 0
    assert "| student |" in (run / "distill_report.md").read_text()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["unlabelled_faces_used"] == int(distilled["manifest"].kept.sum()) > 0
    # An ordinary model folder: `run` serves it.
    out = tmp_path / "preds.csv"
    run_command("run", f"run.img=['{distilled['unlabeled'] / 'photo.jpg'}']", f"model_path={model}",
                f"run.output={out}", "run.display=false", "run.annotate=false", "detector=none",
                f"paths.cache={setup['cache']}", run_dir=tmp_path / "serve")
    preds = pd.read_csv(out)
    assert len(preds) == 1 and preds["gender"].iloc[0] in ("male", "female")


@pytest.mark.slow
def test_test_split_face_is_refused_and_reported(distilled):
    rows = rows_of(distilled["manifest"], "copied_test_face.jpg")
    assert len(rows) == 1 and not rows.kept.iloc[0]
    assert "teacher's test split" in rows.reason.iloc[0]


@pytest.mark.slow
def test_unreadable_files_and_empty_source_are_reported(distilled):
    manifest = distilled["manifest"]
    for name in ("broken.jpg", "broken.mp4"):
        rows = rows_of(manifest, name)
        assert len(rows) == 1 and not rows.kept.iloc[0] and rows.reason.iloc[0].startswith("unreadable"), name
    assert "no faces kept from this source" in distilled["stdout"]
    assert "Traceback" not in distilled["stdout"]


@pytest.mark.slow
def test_video_stride_and_duplicates(distilled):
    rows = rows_of(distilled["manifest"], "clip.avi")
    assert list(rows.frame.astype(int)) == [0, 2, 4, 6, 8, 10]  # every 2nd of 12 frames
    # Each still face counts once: frames 0 and 6 are kept, the others repeat them.
    assert list(rows[rows.kept].frame.astype(int)) == [0, 6]
    assert set(rows[~rows.kept].reason) == {"near-duplicate of frame 0", "near-duplicate of frame 6"}


@pytest.mark.slow
def test_teacher_outputs_are_cached(setup, distilled):
    from faceattr.data.prepare import prepare_dataset
    from faceattr.distill.teacher import Teacher

    summary = json.loads((distilled["run"] / "train_summary.json").read_text())
    assert summary["teacher_faces_labelled"] > 0
    cfg = compose_config(["command=distill", "model=cnn", *common(setup["data"], setup["cache"])])
    frame = prepare_dataset(cfg.data, cfg.rebalance, setup["root"] / "again").frame
    teacher = Teacher(cfg, setup["teacher"])
    train = frame[frame.image.isin(setup["split"].query("split == 'train'").image)]
    first = teacher.label_photos(train)
    assert teacher.cache.labelled == 0  # the distill run above labelled them all
    # A new face is labelled once, then found by its content.
    face = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    teacher.label_chips([face])
    again = Teacher(cfg, setup["teacher"])
    again.label_chips([face.copy()])
    assert (teacher.cache.labelled, again.cache.labelled) == (1, 0)
    assert first["gender"].shape == (len(train), 2) and np.allclose(first["gender"].sum(axis=1), 1, atol=1e-3)


def test_confidence_filter_keeps_what_it_says():
    from faceattr.distill.manifest import apply_teacher
    from faceattr.distill.sources import FaceRecord

    chip = np.zeros((8, 8, 3), np.uint8)
    records = [FaceRecord(f"f{i}.jpg", None, 0, (0, 0, 8, 8), False, chip) for i in range(3)]
    outputs = {"age": np.array([30.0, 40.0, 50.0]),
               "gender": np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]]),
               "race": np.array([[0.7, 0.1, 0.1, 0.05, 0.05], [0.9, 0.1, 0, 0, 0], [0.3, 0.3, 0.2, 0.1, 0.1]])}
    rows = apply_teacher(records, outputs, 0.6)
    assert [r["kept"] for r in rows] == [True, False, False]
    assert rows[1]["reason"] == "gender confidence 0.55 < 0.6"
    assert rows[2]["reason"] == "race confidence 0.30 < 0.6"
    assert rows[0]["gender"] == "male" and rows[2]["gender"] == "female"


def test_targets_mix_teacher_and_labels():
    from faceattr.distill.student import mix_targets, soften

    frame = pd.DataFrame({"split": ["train", "val", "train"], "labelled": [True, True, False],
                          "age": [20, 30, 0], "gender": [0, 1, 0], "race": [2, 3, 0]})
    teacher = {"age": np.array([30.0, np.nan, 50.0]), "gender": np.array([[0.2, 0.8], [np.nan] * 2, [0.6, 0.4]]),
               "race": np.full((3, 5), 0.2)}
    out = mix_targets(frame, teacher, alpha=0.25, temperature=1.0)
    assert out["age"][:, 0] == pytest.approx([22.5, 30.0, 50.0])
    assert out["gender"][0] == pytest.approx([0.25 * 0.2 + 0.75, 0.25 * 0.8])
    assert out["gender"][1] == pytest.approx([0.0, 1.0])  # validation: the truth
    assert out["gender"][2] == pytest.approx([0.6, 0.4])  # unlabelled: the teacher alone
    assert soften(np.array([[0.9, 0.1]]), 2.0)[0] == pytest.approx([0.75, 0.25])


def test_targets_take_age_groups_and_missing_labels():
    from faceattr.distill.student import mix_targets

    nan = np.nan
    frame = pd.DataFrame({"split": ["train", "train", "val", "val", "val"], "labelled": [True] * 5,
                          "age": [nan, 40.0, nan, nan, 8.0], "age_lo": [20.0, 40.0, nan, 60.0, 8.0],
                          "age_hi": [29.0, 40.0, nan, np.inf, 8.0],
                          "gender": [1, 0, -1, 0, 1], "race": [-1, 3, 2, 1, 0]})
    teacher = {"age": np.array([35.0, 30.0, nan, nan, nan]),
               "gender": np.array([[0.5, 0.5], [0.9, 0.1], [nan] * 2, [nan] * 2, [nan] * 2]),
               "race": np.full((5, 5), 0.2)}
    out = mix_targets(frame, teacher, alpha=0.25, temperature=1.0)
    # An age group: the truth is the nearest age inside it to the teacher's (29 for 35 in 20-29).
    assert out["age"][0, 0] == pytest.approx(0.25 * 35 + 0.75 * 29)
    assert out["age"][1, 0] == pytest.approx(0.25 * 30 + 0.75 * 40)
    assert out["age"][0] == pytest.approx([0.25 * 35 + 0.75 * 29] * 2)  # a training target: one age
    assert np.isnan(out["age"][2]).all()  # validation without an age: no loss
    # Validation keeps the labelled interval (an open group's end as the training targets write it),
    # so the interval loss scores a student's age inside the group as right, as `train` does.
    assert out["age"][3] == pytest.approx([60.0, OPEN_END])
    assert out["age"][4] == pytest.approx([8.0, 8.0])
    assert out["race"][0] == pytest.approx([0.2] * 5)  # no race: the teacher alone, no class made up
    assert out["gender"][2] == pytest.approx([0.0, 0.0])  # validation without a gender: no target


@pytest.mark.slow
def test_teacher_without_split_csv_is_refused(setup, tmp_path):
    teacher = tmp_path / "no_split"
    shutil.copytree(setup["teacher"], teacher)
    (teacher / "split.csv").unlink()
    with pytest.raises(ConfigError) as refused:  # the CLI prints a typed error as one line (test_cli)
        run_command("distill", "model=cnn", f"distill.teacher={teacher}", *common(setup["data"], setup["cache"]),
                    run_dir=tmp_path / "run")
    assert "no split.csv" in str(refused.value) and str(teacher) in str(refused.value)
    assert "\n" not in str(refused.value)


def test_student_from_a_model_that_trained_on_a_val_image_is_refused_as_train_refuses_it(tmp_path):
    """``train.init_from`` for a student goes through ``train``'s own checks (``make_trainer``):
    a starting model whose training split holds one of this run's val images is refused."""
    from faceattr.distill.student import student_trainer

    shipped = Path(__file__).resolve().parents[2] / "saved_model" / "cnn"
    start = tmp_path / "start"
    start.mkdir()
    for name in ("model_info.json", "split.csv"):
        shutil.copy(shipped / name, start / name)
    seen = pd.read_csv(start / "split.csv").query("split == 'train'")["image"].iloc[0]
    frame = pd.DataFrame({"image": [seen, "new.jpg"], "split": ["val", "train"]})
    cfg = compose_config(["command=distill", "model=cnn", f"train.init_from={start}"])
    with pytest.raises(ConfigError, match="was trained on 1 image\\(s\\) of this run's val/test split"):
        student_trainer(cfg, frame)
