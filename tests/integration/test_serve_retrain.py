"""A retrain job from the web app, for real: a smoke-size CNN trained on a tiny synthetic
UTKFace folder (conftest's ``cnn_run``) is served, a face is corrected, and ``POST /api/retrain`` fine-tunes it on the
correction replayed with its own training split; the job finishes with the new and the served
model's figures on the served model's test split, side by side. Also ``data.extra_labels``
itself: extra chips join the training split only.
"""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
AGES = (1, 5, 14, 23, 27, 35, 45, 58, 66, 85)


def tiny_archive(folder: Path, n: int = 80) -> Path:
    """``UTKFace.tar.gz`` of ``n`` 32x32 noise JPEGs named like UTKFace (every class and age bin)."""
    images = folder / "UTKFace"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"{AGES[i % len(AGES)]}_{i % 2}_{i % 5}_20170101{i:09d}.jpg.chip.jpg"
        assert cv2.imwrite(str(images / name), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    archive = folder / "UTKFace.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(images, arcname="UTKFace")
    return archive


@pytest.mark.slow
def test_a_retrain_job_finishes_with_both_models_figures(cnn_run, shared_cache, tmp_path):
    """``cnn_run`` (conftest): the tiny CNN at smoke size on a synthetic UTKFace folder, evaluated."""
    from faceattr.config import compose_config
    from faceattr.inference.pipeline import FacePipeline
    from faceattr.serve.app import create_app

    model_dir, cache = cnn_run / "model", shared_cache
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    cfg = compose_config(["command=serve", "model=cnn", f"model_path={model_dir}", f"paths.cache={cache}",
                          f"serve.data_dir={tmp_path / 'serve'}", f"serve.retrain_dir={tmp_path / 'retrain'}",
                          "serve.retrain_epochs=1", "serve.retrain_overrides=['debug=smoke']",
                          "serve.allowed_hosts=[testserver]"])
    app = create_app(cfg, FacePipeline.from_config(cfg))
    client = TestClient(app)
    token = client.get("/api/session").json()["csrf"]
    headers = {"X-CSRF-Token": token}
    with ASTRONAUT.open("rb") as fh:
        up = client.post("/api/uploads", files={"image": ("a.jpg", fh, "image/jpeg")}, headers=headers).json()
    assert len(up["faces"]) == 1
    wrong = "male" if up["faces"][0]["gender"] == "female" else "female"
    assert client.put(f"/api/uploads/{up['id']}/faces/0/label", json={"gender": wrong, "age": 40},
                      headers=headers).status_code == 200

    res = client.post("/api/retrain", headers=headers)
    assert res.status_code == 202
    job = res.json()["job"]
    again = client.post("/api/retrain", headers=headers)  # one job at a time per server
    assert again.status_code == 409 and again.json()["job"] == job and "running already" in again.json()["error"]
    other = TestClient(app)
    other_token = other.get("/api/session").json()["csrf"]
    assert other.get(f"/api/jobs/{job}").status_code == 404  # another session's job
    assert other.get("/api/jobs/current").json() == {"job": None}
    assert other.post("/api/retrain", headers={"X-CSRF-Token": other_token}).status_code == 422  # no corrections
    reloaded = TestClient(app, cookies=dict(client.cookies))  # the page after a reload: the same cookie
    assert reloaded.get("/api/jobs/current").json()["job"] == job
    seen, phases = [], []
    deadline = time.time() + 480
    while time.time() < deadline:
        state = client.get(f"/api/jobs/{job}").json()
        seen.append((state["state"], state["progress"]))
        phases.append(state["phase"])
        assert 0.0 <= state["progress"] <= 1.0
        if state["state"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert state["state"] == "done", state
    assert reloaded.get("/api/jobs/current").json()["state"] == "done"
    # Every phase seen is one the job names, ending at "done". A one-epoch run on a few faces may
    # pass through training between two polls; test_a_job_names_its_phase_with_a_count... checks
    # each phase's text line by line.
    known = ("copying", "waiting", "preparing", "extracting", "training", "exporting", "scoring", "done")
    assert all(p.startswith(known) for p in phases) and phases[-1] == "done", phases
    assert phases[0].startswith(("copying", "waiting", "preparing")), phases
    assert [p for _, p in seen] == sorted(p for _, p in seen)  # progress only grows
    run_dir = Path(state["run_dir"])
    assert run_dir.is_relative_to(tmp_path / "retrain") and (run_dir / "model" / "model_info.json").is_file()
    figures = {f["metric"]: f for f in state["metrics"]["figures"]}
    for metric in ("age_mae", "gender_accuracy", "race_accuracy"):
        assert isinstance(figures[metric]["served"], float) and isinstance(figures[metric]["new"], float)
    assert figures["age_mae"]["lower_is_better"] and not figures["gender_accuracy"]["lower_is_better"]
    assert state["metrics"]["corrections"] == 1 and state["metrics"]["split"] == "test"
    # Both were scored on the served model's test split; the corrections trained only.
    served_split = pd.read_csv(model_dir / "split.csv")
    new_split = pd.read_csv(run_dir / "model" / "split.csv")
    test_names = set(served_split.query("split == 'test'")["image"])
    assert set(new_split.query("split == 'test'")["image"]) == test_names
    extra = new_split[new_split["image"].str.startswith("extra/")]
    assert len(extra) == 1 and extra["split"].tolist() == ["train"]
    served_metrics = json.loads((run_dir / "served" / "metrics.json").read_text())
    assert served_metrics.get("n", served_metrics.get("n_test")) == len(test_names)
    labels = pd.read_csv(run_dir / "corrections" / "labels.csv")
    assert labels["gender"].tolist() == [wrong] and labels["age"].tolist() == [40]
    # The served model is untouched: only `promote` changes it.
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == before


def test_a_job_s_progress_moves_within_an_epoch():
    """An epoch of the shipped FaceNet model takes minutes: the job's progress follows Keras' step counter."""
    from faceattr.serve.jobs import TrainProgress

    progress = TrainProgress()
    bar = "\x1b[1m{}/46\x1b[0m \x1b[32m━━━━━━━━━━\x1b[0m\x1b[37m━━━━━━━━━━\x1b[0m 9s/step - age_loss: 8.06"
    seen = [progress.feed(line) for line in ("Epoch 1/2", bar.format(23), bar.format(46), "Epoch 2/2",
                                             bar.format(23), "[INFO] - saved 12/40 files", "1/Unknown 11s")]
    assert seen == [0.0, 0.25, 0.5, 0.5, 0.75, None, None]


def test_a_job_names_its_phase_with_a_count_and_the_time_it_has_left():
    """The lines a FaceNet retrain prints, in order: features (tqdm), epochs (Keras), the
    export (its log line), the new model scored (tqdm)."""
    from faceattr.serve.jobs import JobProgress

    progress = JobProgress("preparing the data", "scoring the new model on the test split")
    bar = "\x1b[1m{}/46\x1b[0m \x1b[32m━━━━━━━━━━\x1b[0m 9s/step - age_loss: 8.06"
    lines = [
        (0, "FaceNet features (augmented copy 1):   0%|          | 0/2000 [00:00<?, ?img/s]"),
        (30, "FaceNet features (augmented copy 1):  23%|██▎       | 460/2000 [00:30<01:40, 15.20img/s]"),
        (100, "Epoch 1/2"), (110, bar.format(10)), (146, bar.format(46)), (150, "Epoch 2/2"), (190, bar.format(40)),
        (196, bar.format(46)),
        (230, "[2026-12-06 22:00:00,000][faceattr.models.export][INFO] - Exported /r/model/model.tflite (dynamic, "
              "1.2 MB) in 30.0 s"),
        (240, "faces (keras):  50%|█████     | 1470/2941 [00:10<00:10, 147.00img/s]"),
    ]
    seen = []
    for now, line in lines:
        progress.feed(line, now=now)
        seen.append((progress.phase, progress.eta_s, round(progress.fraction, 3)))
    assert seen == [
        ("extracting features: 0 of 2000 faces", None, 0.0),
        ("extracting features: 460 of 2000 faces", 100.0, 0.0),
        ("training: epoch 1 of 2", None, 0.0),
        ("training: epoch 1 of 2, step 10 of 46", 36.0, round(10 / 46 / 2, 3)),
        ("training: epoch 1 of 2, step 46 of 46", 0.0, 0.5),
        ("training: epoch 2 of 2", None, 0.5),
        ("training: epoch 2 of 2, step 40 of 46", 6.0, round((1 + 40 / 46) / 2, 3)),
        ("exporting the model", None, 1.0),
        ("scoring the new model on the test split", None, 1.0),
        ("scoring the new model on the test split: 1470 of 2941 faces", 10.0, 1.0),
    ]


def test_one_retrain_job_at_a_time_per_server(tmp_path):
    """The database keeps the server's jobs: a second while one is queued or running is refused
    with the unfinished one's id, whichever session asks; once it ends, the next may start."""
    from faceattr.serve.store import Store

    store = Store(tmp_path / "serve")
    first, busy = store.add_job("session-a")
    assert first and busy is None
    assert store.add_job("session-b") == ("", first)
    store.update_job(first, state="running")
    assert store.add_job("session-a") == ("", first)
    assert store.latest_job("session-a")["id"] == first and store.latest_job("session-b") is None
    store.update_job(first, state="done", phase="done")
    second, busy = store.add_job("session-b")
    assert second and busy is None and store.latest_job("session-b")["phase"] == "waiting to start"


def test_extra_labels_join_the_training_split_only(tmp_path):
    from faceattr.data.prepare import prepare_dataset
    from faceattr.errors import DataError

    archive = tiny_archive(tmp_path / "data", 40)
    chips = tmp_path / "chips"
    chips.mkdir()
    for i in range(3):
        assert cv2.imwrite(str(chips / f"c{i}.jpg"), np.full((32, 32, 3), 40 * i, np.uint8))
    (chips / "labels.csv").write_text("file,age,gender,race\nc0.jpg,30,male,white\nc1.jpg,61,female,asian\n"
                                      "c2.jpg,5,1,4\n")
    data = {"path": str(archive), "extract_dir": str(tmp_path / "x"), "split": {"seed": 1},
            "extra_labels": str(chips / "labels.csv"), "extra_copies": 4}
    prepared = prepare_dataset(data, {"name": "none"}, tmp_path / "run")
    frame = prepared.frame
    extra = frame[frame["image"].str.startswith("extra/")]
    assert len(extra) == 3 and set(extra["split"]) == {"train"} and set(extra["copies"]) == {4}
    assert extra["gender"].tolist() == [0, 1, 1] and extra["race"].tolist() == [0, 2, 4]
    assert extra["age_bin"].tolist() == [3, 5, 0]
    plain = prepare_dataset({**data, "extra_labels": None}, {"name": "none"}, tmp_path / "run2").frame
    pd.testing.assert_frame_equal(frame[~frame["image"].str.startswith("extra/")].reset_index(drop=True),
                                  plain.reset_index(drop=True))  # val and test exactly as without them
    (chips / "labels.csv").write_text("file,age,gender,race\nc0.jpg,,male,white\n")
    with pytest.raises(DataError, match=r"labels.csv: row 2: c0.jpg needs an exact age"):
        prepare_dataset(data, {"name": "none"}, tmp_path / "run3")


def test_a_retrain_trains_with_the_served_model_s_augmentation(tmp_path):
    """The shipped FaceNet model was trained on faces degraded like real photos: its retrain job
    trains with the same ``data.augment`` (and reuses the cached copies made with it)."""
    import shutil

    from faceattr.config import compose_config
    from faceattr.serve.jobs import train_overrides

    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(ROOT / "saved_model" / "facenet" / "model_info.json", served)
    augment = json.loads((served / "model_info.json").read_text())["trained_with"]["data"]["augment"]
    assert augment["jpeg"] > 0  # not the defaults: the test would prove nothing
    overrides = train_overrides(served, tmp_path / "run", tmp_path / "labels.csv", compose_config(["command=serve"]))
    cfg = compose_config(["command=train", *[o for o in overrides if not o.startswith("hydra.")]])
    assert {key: cfg.data.augment[key] for key in augment} == augment
    assert cfg.data.train_limit == cfg.serve.retrain_replay == 2000  # a sample of the split, replayed
