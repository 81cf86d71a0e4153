"""Labelled photo sets as training sources: labels.csv folders and archives beside UTKFace, faces
put onto the chip template, partial and interval labels, honest splits across sources."""

from __future__ import annotations

import math
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, make_fake_utkface
from faceattr.data.labelled import index_labelled, parse_age_group
from faceattr.data.prepare import prepare_dataset
from faceattr.data.targets import OPEN_END, label_arrays
from faceattr.errors import InputError
from faceattr.inference.chips import align_training_photos

EXAMPLE = ROOT / "examples" / "astronaut.jpg"
FAIRFACE = ROOT.parent / "shared/data/FairFace.tar.gz"
FAIRFACE_DEV = ROOT.parent / "shared/data/external/fairface-dev"
LABELS = ["file,age,age_group,age_lo,age_hi,gender,race,split"]


def _face_photos(folder: Path, n: int) -> list[str]:
    """``n`` different photos of the example's face (crops at varied framing, some mirrored), like
    a labelled set's everyday photos; their names."""
    image = cv2.imread(str(EXAMPLE))
    h, w = image.shape[:2]
    names = []
    for i in range(n):
        pad = 0.08 * (i % 4)
        crop = image[: int(h * (0.6 + pad)), int(w * 0.1): int(w * (0.75 + pad))]
        crop = cv2.resize(crop, (180 + 10 * i, 180 + 10 * i), interpolation=cv2.INTER_AREA)
        if i % 2:
            crop = crop[:, ::-1]
        name = f"photo_{i:02d}.jpg"
        cv2.imwrite(str(folder / name), crop)
        names.append(name)
    return names


@pytest.fixture
def labelled_archive(tmp_path: Path) -> dict:
    """A .tar.gz of a labelled set (age groups, an open group, an exact age, a missing race, an own
    split), plus a blank photo (no face: placed by the set's framing), an undecodable file, a copy
    of a UTKFace chip and a photo that is also in a held-out evaluation folder."""
    utk = tmp_path / "UTKFace"
    chips = make_fake_utkface(utk, 40, size=48)
    src = tmp_path / "lab"
    src.mkdir()
    names = _face_photos(src, 12)
    rows = list(LABELS)
    groups = ["20-29", "30-39", "70+", "3-9"]
    for i, name in enumerate(names):
        split = "val" if i % 4 == 3 else "train"
        race = "" if i == 5 else ["white", "asian", "others"][i % 3]
        age, group = ("35", "") if i == 2 else ("", groups[i % 4])
        rows.append(f"{name},{age},{group},,,{['male', 'female'][i % 2]},{race},{split}")
    cv2.imwrite(str(src / "blank.jpg"), np.full((200, 200, 3), 128, np.uint8))
    rows.append("blank.jpg,,,20,29,female,black,train")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows.append("broken.jpg,,,40,49,male,white,train")
    shutil.copy(chips[0], src / "copy_of_utk.jpg")
    rows.append("copy_of_utk.jpg,,,0,2,male,white,train")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    shutil.copy(src / names[1], held_out / "dev_0001.jpg")
    archive = tmp_path / "lab.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="lab")
    return {"utk": utk, "archive": archive, "held_out": held_out, "names": names}


def _data_cfg(setup: dict, tmp_path: Path, **more) -> dict:
    return {"path": str(setup["utk"]), "extract_dir": str(tmp_path / "cache"), "held_out": [str(setup["held_out"])],
            "split": {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 0}, "align_workers": 1,
            "sources": {"lab": {"path": str(setup["archive"]), "weight": 2.0, "align": True}}, **more}


@pytest.mark.slow
def test_a_labelled_archive_trains_beside_utkface(labelled_archive, tmp_path):
    prepared = prepare_dataset(_data_cfg(labelled_archive, tmp_path), {"name": "none"}, tmp_path / "run",
                               cache_dir=tmp_path / "weights", aligner=align_training_photos)
    frame = prepared.frame
    lab = frame[frame["source"] == "lab"].set_index("image")
    names = labelled_archive["names"]
    # Left out, each with its reason: the held-out copy, the UTKFace copy, the undecodable file.
    summary = prepared.summary["sources"]["lab"]
    reasons = summary["left_out_reasons"]
    assert reasons["byte-identical to a held-out evaluation photo"] == 1
    assert reasons["byte-identical to a photo of an earlier source"] == 1
    assert reasons["not a decodable image"] == 1
    assert f"lab/{names[1]}" not in lab.index and "lab/copy_of_utk.jpg" not in lab.index
    assert "lab/broken.jpg" not in lab.index
    # The real faces are aligned; the blank photo is placed by the set's framing; counts add up.
    assert summary["alignment"]["aligned"] >= 10
    assert lab.loc["lab/blank.jpg", "chip"] == "fallback"
    assert sum(summary["alignment"].values()) == len(lab) + 1  # + the undecodable one, skipped
    for path in lab["path"]:
        chip = cv2.imread(path)
        assert chip.shape == (200, 200, 3)  # UTKFace's chip size, read by the pipeline like any chip
    # Labels: groups, an open group, an exact age, a missing race; the own split honoured.
    assert lab.loc[f"lab/{names[0]}", ["age_lo", "age_hi"]].tolist() == [20.0, 29.0]
    assert math.isnan(lab.loc[f"lab/{names[0]}", "age"])
    assert lab.loc[f"lab/{names[6]}", "age_hi"] == math.inf
    assert lab.loc[f"lab/{names[2]}", ["age", "age_lo", "age_hi"]].tolist() == [35.0, 35.0, 35.0]
    assert lab.loc[f"lab/{names[5]}", "race"] == -1
    assert set(lab.loc[[f"lab/{n}" for n in names[3::4]], "split"]) == {"val"}
    assert set(lab["split"]) == {"train", "val"}
    # Mixing weight 2 for the set's training faces, the mean training weight kept at 1.
    train = frame[frame["split"] == "train"]
    w_lab = train.loc[train["source"] == "lab", "weight"].iloc[0]
    w_utk = train.loc[train["source"] == "utkface", "weight"].iloc[0]
    assert w_lab == pytest.approx(2 * w_utk) and train["weight"].mean() == pytest.approx(1.0)
    # UTKFace's split is the one it has alone.
    alone = prepare_dataset({**_data_cfg(labelled_archive, tmp_path), "sources": {}}, {"name": "none"},
                            tmp_path / "alone").frame
    utk = frame[frame["source"] == "utkface"].set_index("image")["split"]
    assert utk.sort_index().equals(alone.set_index("image")["split"].sort_index())
    # split.csv lists every face once; no content in two splits.
    split_csv = pd.read_csv(tmp_path / "run" / "split.csv")
    assert len(split_csv) == len(frame) and split_csv["image"].is_unique
    assert frame.groupby("sha1")["split"].nunique().max() == 1
    # Keras targets: intervals, the open group's end, -1 for the missing race.
    targets = label_arrays(lab.reset_index())
    row = list(lab.index).index(f"lab/{names[6]}")
    assert targets["age"].shape == (len(lab), 2) and targets["age"][row].tolist() == [70.0, OPEN_END]
    assert targets["race"][list(lab.index).index(f"lab/{names[5]}")] == -1


def test_aligning_is_cached(labelled_archive, tmp_path):
    cfg = _data_cfg(labelled_archive, tmp_path)
    first = prepare_dataset(cfg, {"name": "none"}, tmp_path / "a", cache_dir=tmp_path / "weights",
                            aligner=align_training_photos)
    chips = sorted((tmp_path / "cache").glob("chips-*/*.jpg"))
    stamps = [p.stat().st_mtime_ns for p in chips]
    again = prepare_dataset(cfg, {"name": "none"}, tmp_path / "b", cache_dir=tmp_path / "weights",
                            aligner=align_training_photos)
    assert [p.stat().st_mtime_ns for p in chips] == stamps  # nothing aligned or written twice
    assert again.frame["path"].tolist() == first.frame["path"].tolist()


def test_an_aligned_source_needs_an_aligner(labelled_archive, tmp_path):
    """The data step takes its face aligner from the caller (the detectors are a floor above it):
    without one, a source with ``align`` is refused before its split is written."""
    with pytest.raises(ValueError, match=r"source 'lab' is aligned \(align: true\) but no aligner was given"):
        prepare_dataset(_data_cfg(labelled_archive, tmp_path), {"name": "none"}, tmp_path / "run")
    assert not (tmp_path / "run" / "split.csv").exists()


@pytest.mark.parametrize(("row", "problem"), [
    ("a.jpg,,,,,male,purple,train", "race 'purple' is not one of"),
    ("a.jpg,,twenty,,,male,white,train", "age group 'twenty' does not parse"),
    ("a.jpg,,,40,30,male,white,train", "age_hi 30 is below age_lo 40"),
    ("missing.jpg,,,20,29,male,white,train", "missing.jpg: no such image file"),
    ("a.jpg,,,20,29,male,white,later", "split 'later' is not one of train, val, test"),
    ("a.jpg,,,20,29,male,white,train\na.jpg,,,30,39,male,white,train", "a.jpg is listed twice"),
])
def test_a_bad_labels_row_is_one_line_naming_the_file_and_row(tmp_path, row, problem):
    for name in ("base.jpg", "a.jpg"):
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), len(name), np.uint8))
    (tmp_path / "labels.csv").write_text("\n".join([*LABELS, "base.jpg,,,20,29,male,white,train", row]) + "\n")
    with pytest.raises(InputError) as err:
        index_labelled(tmp_path, "lab", [0, 10, 20, 30, 40, 60, 80, math.inf])
    message = str(err.value)
    assert "\n" not in message and f"{tmp_path / 'labels.csv'}: row " in message and problem in message


def test_bad_rows_stop_training_before_any_work(tmp_path):
    """A bad row fails the data step itself (before features or training), naming the row."""
    utk = tmp_path / "UTKFace"
    make_fake_utkface(utk, 20)
    lab = tmp_path / "lab"
    lab.mkdir()
    cv2.imwrite(str(lab / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    (lab / "labels.csv").write_text("\n".join([*LABELS, "a.jpg,,,20,29,male,klingon,train"]) + "\n")
    cfg = {"path": str(utk), "extract_dir": str(tmp_path / "cache"), "held_out": [], "split": {"seed": 0},
           "sources": {"lab": {"path": str(lab)}}}
    with pytest.raises(InputError, match=r"labels.csv: row 2: race 'klingon'"):
        prepare_dataset(cfg, {"name": "none"}, tmp_path / "run")
    assert not (tmp_path / "run" / "split.csv").exists()


def test_age_groups_parse():
    assert parse_age_group("20-29") == (20.0, 29.0)
    assert parse_age_group(" 70+ ") == (70.0, math.inf)
    assert parse_age_group("3 - 9") == (3.0, 9.0)
    assert parse_age_group("old") is None and parse_age_group("20-") is None


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.skipif(not FAIRFACE.is_file(), reason=f"needs {FAIRFACE} (FairFace's labelled photos)")
def test_fairface_photos_onto_the_template(tmp_path):
    """A stratified sample of the real FairFace archive: its own split, age groups, the photos put
    onto the chip template (nearly all by their landmarks), nothing byte-identical to fairface-dev."""
    from faceattr.config import compose_config

    cfg = compose_config(["data=fairface", "data.limit=60", f"paths.cache={tmp_path / 'cache'}"])
    prepared = prepare_dataset(cfg.data, cfg.rebalance, tmp_path / "run", cache_dir=tmp_path / "weights",
                               aligner=align_training_photos)
    frame = prepared.frame
    summary = prepared.summary["sources"]["fairface"]
    assert set(frame["split"]) <= {"train", "val"} and len(frame) == 60 - summary["left_out"]
    assert frame["age"].isna().all() and frame["age_lo"].notna().all()
    assert summary["alignment"]["aligned"] >= 0.7 * len(frame)
    if FAIRFACE_DEV.is_dir():
        import hashlib

        dev = {hashlib.sha1(p.read_bytes()).hexdigest() for p in FAIRFACE_DEV.glob("*.jpg")}
        originals = pd.read_csv(prepared.sources[0].folder / "labels.csv")
        assert not dev & {hashlib.sha1((prepared.sources[0].folder / f).read_bytes()).hexdigest()
                          for f in originals["file"]}


def _chip_set(folder: Path, rows: list[str], seed: int) -> Path:
    """A labelled set of random 32 px chips ``c<i>.jpg``, one per row (``rows``: the labels.csv cells
    after ``file``); the folder."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(len(rows)):
        cv2.imwrite(str(folder / f"c{i}.jpg"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (folder / "labels.csv").write_text("\n".join([*LABELS, *(f"c{i}.jpg,{r}" for i, r in enumerate(rows))]) + "\n")
    return folder


@pytest.mark.slow
def test_training_on_mixed_labels_reports_each_source(tmp_path, shared_cache):
    """A tiny CNN trained on UTKFace-named chips beside a labelled set of chips with age groups and
    missing labels: every loss stays finite, and the evaluation gives each source apart and the mix."""
    import json

    from conftest import TINY_CNN, run_command, smoke

    utk = tmp_path / "UTKFace"
    make_fake_utkface(utk, 80)
    rows = []
    for i in range(60):
        gender = "" if i % 7 == 0 else ["male", "female"][i % 2]
        race = "" if i % 5 == 0 else ["white", "black", "asian", "indian", "others"][i % 5]
        group = ["0-2", "20-29", "70+"][i % 3]
        rows.append(f",{group},,,{gender},{race},{'val' if i % 4 == 0 else 'train'}")
    lab = _chip_set(tmp_path / "lab", rows, seed=3)
    run = tmp_path / "run"
    source = f"+data.sources={{lab:{{path:'{lab}',align:false}}}}"
    run_command("train", *TINY_CNN, *smoke(utk, shared_cache), "train.eval=true", "data.limit=null", source,
                "train.epochs=1", run_dir=run)
    history = pd.read_csv(run / "history.csv")
    assert np.isfinite(history[["loss", "val_loss", "val_age_mae"]].to_numpy()).all()
    # train --eval: the test split (UTKFace's alone), and the set without a test split on its validation split.
    assert set(pd.read_csv(run / "predictions.csv")["image"]) <= set(pd.read_csv(run / "split.csv").query(
        "split == 'test'")["image"])
    assert json.loads((run / "val" / "metrics.json").read_text())["n"] == 15  # the set alone: its report
    summary = json.loads((run / "statistics" / "data_summary.json").read_text())
    assert summary["sources"]["lab"]["age_groups"] == 60 and summary["sources"]["lab"]["no_race"] == 12
    # The test split holds UTKFace only (the set has train/val of its own); evaluate its validation split.
    run_command("evaluate", *smoke(utk, shared_cache), "data.limit=null", source, f"model_path={run / 'model'}",
                "evaluation.split=val", run_dir=tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["sources"]) == {"utkface", "lab"}
    assert metrics["sources"]["lab"]["n"] == 15 and metrics["mix"]["n"] == 15 + metrics["sources"]["utkface"]["n"]
    assert metrics["sources"]["lab"]["age_interval_error"] is not None and metrics["age_mae"] is not None
    lab_metrics = json.loads((tmp_path / "eval" / "sources" / "lab" / "metrics.json").read_text())
    assert lab_metrics["n_race"] == 15 - 3 and lab_metrics["n_age_interval"] == 15  # rows 0, 20, 40 have no race


@pytest.mark.slow
def test_a_model_is_scored_on_a_source_it_never_trained_on(tmp_path, cnn_run, fake_data, shared_cache):
    """A UTKFace-only model evaluated with a labelled set beside it: the set's own validation split
    is scored (the model never saw it), beside the model's own validation faces."""
    import json

    from conftest import run_command, smoke

    rows = [f",30-39,,,female,asian,{'val' if i < 5 else 'train'}" for i in range(12)]
    lab = _chip_set(tmp_path / "lab", rows, seed=5)
    run_command("evaluate", *smoke(fake_data, shared_cache), f"+data.sources={{lab:{{path:'{lab}',align:false}}}}",
                f"model_path={cnn_run / 'model'}", "evaluation.split=val", run_dir=tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    own_val = pd.read_csv(cnn_run / "model" / "split.csv").query("split == 'val'")
    assert metrics["sources"]["lab"]["n"] == 5 and metrics["sources"]["utkface"]["n"] == len(own_val)
