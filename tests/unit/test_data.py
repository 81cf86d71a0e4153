"""Data pipeline: name parsing, safe extraction, deduplication, the split, rebalancing, the
tf.data pipeline and statistics, on tiny synthetic JPEGs; one test on the real tarball."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import make_fake_utkface
from faceattr.config import group_node
from faceattr.data import utkface
from faceattr.data.archive import MARKER, resolve_image_folder
from faceattr.data.pipeline import augment_batch, load_images, make_dataset
from faceattr.data.prepare import prepare_dataset
from faceattr.data.stats import PLOTS, write_statistics
from faceattr.data.utkface import (
    Labels,
    check_split_disjoint,
    index_images,
    limit_training,
    parse_name,
    rebalance,
    split_index,
    write_split_csv,
)
from faceattr.errors import ConfigError, DataError, UnsafeArchiveError

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}
AUGMENT = {"flip": True, "rotation_deg": 10.0, "brightness": 0.1, "contrast": 0.1, "blur": 0.5}


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("name", "expected"), [
    ("25_1_3_20170119171504380.jpg.chip.jpg", Labels(25, 1, 3)),
    ("1_0_0_20161219140623097.jpg.chip.jpg", Labels(1, 0, 0)),
    ("116_1_4_20170120134921760.jpg.chip.jpg", Labels(116, 1, 4)),
    ("24_0_1_20170116220224657 .jpg.chip.jpg", Labels(24, 0, 1)),  # the space before .jpg
    ("55_0_0_20170116232725357jpg.chip.jpg", Labels(55, 0, 0)),  # missing dot in the release
])
def test_parse_good_names(name, expected):
    assert parse_name(name) == expected


@pytest.mark.parametrize(("name", "reason"), [
    ("61_1_20170109150557335.jpg.chip.jpg", "expected age_gender_race_date, got 3 fields"),
    ("61_1_2_3_20170109150557335.jpg.chip.jpg", "expected age_gender_race_date, got 5 fields"),
    ("x_1_2_20170109150557335.jpg.chip.jpg", "age 'x' is not a whole number"),
    ("30_-1_2_20170109150557335.jpg.chip.jpg", "gender '-1' is not a whole number"),
    ("30_2_2_20170109150557335.jpg.chip.jpg", "gender 2 out of range 0-1"),
    ("30_1_7_20170109150557335.jpg.chip.jpg", "race 7 out of range 0-4"),
    ("130_1_2_20170109150557335.jpg.chip.jpg", "age 130 out of range 0-116"),
    ("30_1_2_.jpg.chip.jpg", "empty date field"),
    ("30_1_2_20170109150557335.png", "not a .jpg file"),
    ("README.md", "not a .jpg file"),
])
def test_parse_bad_names(name, reason):
    assert parse_name(name) == reason


# ---------------------------------------------------------------------------- archives


def _tar_with(path: Path, members: list[tarfile.TarInfo], data: bytes = b"\xff\xd8\xff fake") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _leftovers(extract_dir: Path) -> list[str]:
    return sorted(p.name for p in extract_dir.iterdir()) if extract_dir.exists() else []


@pytest.mark.parametrize("member", ["../evil.jpg", "UTKFace/../../evil.jpg", "/tmp/evil.jpg"])
def test_tar_escaping_member_refused(tmp_path, member):
    archive = _tar_with(tmp_path / "bad.tar.gz", [tarfile.TarInfo("UTKFace/1_0_0_1.jpg.chip.jpg"),
                                                   tarfile.TarInfo(member)])
    extract_dir = tmp_path / "deep" / "extract"
    with pytest.raises(UnsafeArchiveError, match=r"bad\.tar\.gz.*evil\.jpg"):
        resolve_image_folder(archive, extract_dir)
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "deep" / "evil.jpg").exists()
    assert _leftovers(extract_dir) == []  # the partial extraction is removed


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE])
def test_tar_links_and_devices_refused(tmp_path, kind):
    link = tarfile.TarInfo("UTKFace/2_0_0_1.jpg.chip.jpg")
    link.type = kind
    link.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "UTKFace/1_0_0_1.jpg.chip.jpg"
    archive = _tar_with(tmp_path / "links.tgz", [tarfile.TarInfo("UTKFace/1_0_0_1.jpg.chip.jpg"), link])
    with pytest.raises(UnsafeArchiveError, match=r"links\.tgz.*2_0_0_1"):
        resolve_image_folder(archive, tmp_path / "extract")
    assert _leftovers(tmp_path / "extract") == []


def test_zip_escaping_member_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("UTKFace/1_0_0_1.jpg.chip.jpg", b"\xff\xd8\xff")
        zf.writestr("../evil.jpg", b"\xff\xd8\xff")
    with pytest.raises(UnsafeArchiveError, match=r"bad\.zip.*\.\./evil\.jpg"):
        resolve_image_folder(archive, tmp_path / "extract")
    assert not (tmp_path / "evil.jpg").exists()


def test_zip_symlink_member_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("UTKFace/link.jpg")
        info.external_attr = 0o120777 << 16  # a symbolic link
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match=r"link\.zip.*link\.jpg"):
        resolve_image_folder(archive, tmp_path / "extract")


def test_missing_path_and_unknown_kind(tmp_path):
    with pytest.raises(DataError, match=r"nope\.tar\.gz: no such file or folder"):
        resolve_image_folder(tmp_path / "nope.tar.gz", tmp_path / "extract")
    (tmp_path / "data.rar").write_bytes(b"x")
    with pytest.raises(DataError, match=r"data\.rar: not a folder"):
        resolve_image_folder(tmp_path / "data.rar", tmp_path / "extract")


def test_folder_descends_into_single_subfolder(fake_utkface):
    assert resolve_image_folder(fake_utkface.parent, fake_utkface.parent / "unused") == fake_utkface
    assert resolve_image_folder(fake_utkface, fake_utkface.parent / "unused") == fake_utkface


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archive_extracted_once(tmp_path, fake_utkface, kind):
    base = tmp_path / "UTKFace"
    archive = Path(shutil.make_archive(str(base), "gztar" if kind == "tar.gz" else "zip", tmp_path, "UTKFace"))
    extract_dir = tmp_path / "extract"
    folder = resolve_image_folder(archive, extract_dir)
    assert folder.name == "UTKFace" and folder.parent.parent == extract_dir
    assert folder.parent.name.startswith("UTKFace-")
    assert len(list(folder.glob("*.jpg"))) == 60
    marker = folder.parent / MARKER
    before = marker.stat().st_mtime_ns
    time.sleep(0.01)
    assert resolve_image_folder(archive, extract_dir) == folder
    assert marker.stat().st_mtime_ns == before
    assert [p.name for p in extract_dir.iterdir()] == [folder.parent.name]  # no temp folders left
    # Without its marker a folder counts as unfinished and is replaced.
    marker.unlink()
    (folder / "junk.txt").write_text("left by a crash")
    assert resolve_image_folder(archive, extract_dir) == folder
    assert marker.is_file() and not (folder / "junk.txt").exists()
    # Touched (a new modification time, the same bytes: a fresh copy): hashed once and reused.
    os.utime(archive, ns=(before + 10**9, before + 10**9))
    assert resolve_image_folder(archive, extract_dir) == folder
    # A changed archive (one image more) is extracted afresh into its own folder.
    first = sorted(base.glob("*.jpg"))[0]
    shutil.copy(first, first.with_name("1" + first.name))
    shutil.make_archive(str(base), "gztar" if kind == "tar.gz" else "zip", tmp_path, "UTKFace")
    fresh = resolve_image_folder(archive, extract_dir)
    assert fresh.parent != folder.parent and len(list(fresh.glob("*.jpg"))) == 61


# ---------------------------------------------------------------------------- indexing


def test_index_columns_and_skips(fake_utkface, caplog):
    (fake_utkface / "61_1_20170109150557335.jpg.chip.jpg").write_bytes(b"\xff\xd8\xff")
    (fake_utkface / "20_0_0_20170109150557335.jpg.chip.jpg").write_bytes(b"GIF89a not a jpeg")
    (fake_utkface / ".DS_Store").write_bytes(b"ignored")
    (fake_utkface / "sub").mkdir()
    with caplog.at_level("WARNING"):
        index = index_images(fake_utkface, None, seed=0, cache_dir=None)
    frame = index.frame
    assert {"image", "path", "age", "gender", "race", "age_bin", "sha1"} <= set(frame.columns)
    assert len(frame) == 60 and frame["image"].is_unique and index.files_seen == 62
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["path"])
    assert dict(index.skipped) == {"61_1_20170109150557335.jpg.chip.jpg": "expected age_gender_race_date, got 3 fields",
                                   "20_0_0_20170109150557335.jpg.chip.jpg": "not a JPEG (bad magic bytes)"}
    assert "61_1_20170109150557335.jpg.chip.jpg: expected age_gender_race_date" in caplog.text
    row = frame.set_index("image").loc["23_1_3_20170101000000003.jpg.chip.jpg"]
    assert (row.age, row.gender, row.race, row.age_bin) == (23, 1, 3, 2)


def test_dedup_keeps_one_copy_and_drops_conflicts(fake_utkface):
    paths = sorted(fake_utkface.iterdir())
    age, gender, race = parse_name(paths[0].name)
    for k in (1, 2):  # two more copies of paths[0] under its own labels
        shutil.copy(paths[0], fake_utkface / f"{age}_{gender}_{race}_2017010200000000{k}.jpg.chip.jpg")
    age, gender, race = parse_name(paths[1].name)
    conflict = fake_utkface / f"{age}_{1 - gender}_{race}_20170102000000003.jpg.chip.jpg"
    shutil.copy(paths[1], conflict)  # a copy of paths[1] claiming the other gender
    index = index_images(fake_utkface, None, seed=0, cache_dir=None)
    assert index.duplicates_removed == 2
    assert len(index.conflicting_dropped) == 1
    dropped = index.conflicting_dropped[0]
    assert sorted(dropped["images"]) == sorted([paths[1].name, conflict.name])
    assert len(index.frame) == 60 - 1  # paths[1] went with its conflicting copy
    assert index.frame["sha1"].is_unique
    assert paths[1].name not in set(index.frame["image"])
    assert index.unique_images == 59


def test_hash_cache_reused(fake_utkface, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = index_images(fake_utkface, None, seed=0, cache_dir=cache)
    calls = []
    original = utkface._hash_file
    monkeypatch.setattr(utkface, "_hash_file", lambda p: calls.append(p) or original(p))
    second = index_images(fake_utkface, None, seed=0, cache_dir=cache)
    assert calls == []
    pd.testing.assert_frame_equal(first.frame, second.frame)
    # A changed file is hashed again.
    path = Path(first.frame["path"].iloc[0])
    make_fake_utkface(tmp_path / "other", 1, seed=5)
    shutil.copy(next((tmp_path / "other").iterdir()), path)
    third = index_images(fake_utkface, None, seed=0, cache_dir=cache)
    assert calls == [path]
    assert third.frame["sha1"].iloc[0] != first.frame["sha1"].iloc[0]


def test_limit_is_deterministic_and_stratified(fake_utkface):
    a = index_images(fake_utkface, 20, seed=1).frame
    b = index_images(fake_utkface, 20, seed=1).frame
    c = index_images(fake_utkface, 20, seed=2).frame
    assert len(a) == 20 and a["image"].tolist() == b["image"].tolist()
    assert a["image"].tolist() != c["image"].tolist()
    assert set(a["gender"]) == {0, 1} and set(a["race"]) == set(range(5))
    assert index_images(fake_utkface, 1000, seed=1).frame.shape[0] == 60
    with pytest.raises(ConfigError, match="data.limit"):
        index_images(fake_utkface, 0, seed=1)


# ---------------------------------------------------------------------------- split


@pytest.mark.parametrize("n", [12, 60, 300])
def test_split_disjoint_deterministic_and_proportional(tmp_path, n):
    make_fake_utkface(tmp_path / "faces", n, size=8)
    frame = index_images(tmp_path / "faces", None, seed=0).frame
    split = split_index(frame, RATIOS, seed=3)
    assert split["split"].isin(["train", "val", "test"]).all()
    for column in ("image", "sha1"):
        assert split.groupby(column)["split"].nunique().max() == 1
    again = split_index(frame.sample(frac=1, random_state=0), RATIOS, seed=3)  # row order doesn't matter
    assert split["split"].tolist() == again["split"].tolist()
    counts = split["split"].value_counts()
    for name, ratio in RATIOS.items():
        assert abs(counts.get(name, 0) - ratio * n) <= max(2, 0.05 * n), counts.to_dict()
    if n >= 60:
        assert split_index(frame, RATIOS, seed=4)["split"].tolist() != split["split"].tolist()


def test_train_limit_shrinks_the_training_split_only(tmp_path):
    """A retrain job replays part of the training split: val and test must stay exactly as they were."""
    make_fake_utkface(tmp_path / "faces", 300, size=8)
    split = split_index(index_images(tmp_path / "faces", None, seed=0).frame, RATIOS, seed=3)
    kept = limit_training(split, 40, seed=3)
    train = kept[kept["split"] == "train"]
    assert len(train) == 40 and set(train["image"]) < set(split.query("split == 'train'")["image"])
    assert set(train["gender"]) == {0, 1} and set(train["race"]) == set(range(5))  # stratified
    for name in ("val", "test"):
        assert kept[kept["split"] == name]["image"].tolist() == split[split["split"] == name]["image"].tolist()
    assert kept["image"].tolist() == limit_training(split, 40, seed=3)["image"].tolist()
    assert limit_training(split, 10_000, seed=3) is split and limit_training(split, None, seed=3) is split


def test_split_bad_ratios_and_leak_check(fake_utkface):
    frame = index_images(fake_utkface, None, seed=0).frame
    with pytest.raises(ConfigError, match="data.split"):
        split_index(frame, {"train": 0.7, "val": 0.2, "test": 0.2}, seed=0)
    with pytest.raises(ConfigError, match="data.split"):
        split_index(frame, {"train": 1.0}, seed=0)
    leaky = split_index(frame, RATIOS, seed=0)
    leaky.loc[leaky.index[0], "sha1"] = leaky.loc[leaky["split"] == "test", "sha1"].iloc[0]
    if leaky.loc[leaky.index[0], "split"] == "test":
        leaky.loc[leaky.index[0], "split"] = "train"
    with pytest.raises(DataError, match="split leaks"):
        check_split_disjoint(leaky)


# ---------------------------------------------------------------------------- rebalance


def _bins_frame(train_counts: dict[int, int], other: int = 5) -> pd.DataFrame:
    rows = [("train", b) for b, n in train_counts.items() for _ in range(n)]
    rows += [(s, b) for s in ("val", "test") for b in train_counts for _ in range(other)]
    return pd.DataFrame(rows, columns=["split", "age_bin"])


def test_oversample_arithmetic():
    frame = _bins_frame({0: 100, 1: 10, 2: 40, 3: 60, 4: 3})
    out = rebalance(frame, {"name": "oversample", "target": 0.5, "max_copies": 5})
    per_bin = out[out.split == "train"].groupby("age_bin")["copies"].agg(["min", "max"])
    assert (per_bin["min"] == per_bin["max"]).all()  # one number per bin
    expected = {0: 1, 1: 5, 2: 2, 3: 1, 4: 5}  # ceil(0.5 * 100 / n), clipped to [1, 5]
    assert per_bin["min"].to_dict() == expected
    assert (out.loc[out.split != "train", "copies"] == 1).all()
    assert (out["weight"] == 1.0).all()
    assert out["copies"].dtype.kind == "i"


def test_weights_arithmetic():
    frame = _bins_frame({0: 100, 1: 25, 2: 1})
    out = rebalance(frame, {"name": "weights", "power": 0.5, "max_weight": 5.0})
    train = out[out.split == "train"]
    assert train["weight"].mean() == pytest.approx(1.0)
    raw = {0: 1.0, 1: 2.0, 2: 5.0}  # (100 / n) ** 0.5 = 1, 2, 10 -> clipped to 5
    w = train.groupby("age_bin")["weight"].first()
    scale = w[0] / raw[0]
    assert {b: w[b] / scale for b in raw} == pytest.approx(raw)
    assert (out.loc[out.split != "train", "weight"] == 1.0).all()
    assert (out["copies"] == 1).all()


def test_rebalance_none_and_unknown():
    frame = _bins_frame({0: 10, 1: 2})
    out = rebalance(frame, OmegaConf.create({"name": "none"}))
    assert (out["copies"] == 1).all() and (out["weight"] == 1.0).all()
    with pytest.raises(ConfigError, match="rebalance.name"):
        rebalance(frame, {"name": "smote"})


def test_write_split_csv(tmp_path):
    frame = pd.DataFrame({"image": ["b.jpg", "a.jpg"], "split": ["test", "train"], "copies": [1, 3], "age": [1, 2]})
    path = write_split_csv(frame, tmp_path / "split.csv")
    assert path.read_text().splitlines() == ["image,split,copies", "a.jpg,train,3", "b.jpg,test,1"]


# ---------------------------------------------------------------------------- tf.data


@pytest.fixture
def prepared_frame(fake_utkface) -> pd.DataFrame:
    frame = split_index(index_images(fake_utkface, None, seed=0).frame, RATIOS, seed=0)
    return rebalance(frame, {"name": "oversample", "target": 1.0, "max_copies": 3})


def test_make_dataset_training(prepared_frame):
    train = prepared_frame[prepared_frame.split == "train"]
    assert train["copies"].sum() > len(train)  # the fake data is imbalanced enough to repeat some
    ds = make_dataset(train, 24, 8, training=True, augment_cfg=AUGMENT, shuffle_buffer=64, seed=0)
    assert ds.element_spec[0].shape.as_list() == [None, 24, 24, 3]
    total = 0
    for images, labels in ds:
        assert images.dtype.name == "float32" and images.shape[1:] == (24, 24, 3)
        assert float(images.numpy().min()) >= 0.0 and float(images.numpy().max()) <= 255.0
        n = images.shape[0]
        assert labels["age"].dtype.name == "float32" and labels["age"].shape == (n, 2)  # [lo, hi]: an exact age twice
        assert labels["gender"].dtype.name == "int32" and labels["gender"].shape == (n,)
        assert labels["race"].dtype.name == "int32" and labels["race"].shape == (n,)
        total += n
    assert total == train["copies"].sum()
    assert sum(int(x.shape[0]) for x, _ in ds) == total  # second epoch (from the cache) too


def test_make_dataset_eval_and_weights(prepared_frame):
    val = prepared_frame[prepared_frame.split == "val"]
    ds = make_dataset(val, 16, 4, training=False, with_weights=True)
    batches = list(ds)
    assert sum(b[0].shape[0] for b in batches) == len(val)
    images, labels, weights = batches[0]
    assert weights.dtype.name == "float32" and weights.shape == (images.shape[0],)
    ages = np.concatenate([b[1]["age"].numpy()[:, 0] for b in batches])
    assert ages.tolist() == val["age"].astype(float).tolist()  # evaluation keeps the order
    np.testing.assert_allclose(images.numpy(), load_images(val["path"][:4].tolist(), 16), atol=1e-4)


def test_augment_batch_shapes_and_seed():
    import tensorflow as tf

    images = tf.random.stateless_uniform([4, 20, 20, 3], [1, 2], 0, 255)
    seed = tf.constant([7, 8], tf.int64)
    a = augment_batch(images, seed, AUGMENT)
    assert a.shape == images.shape and float(tf.reduce_min(a)) >= 0 and float(tf.reduce_max(a)) <= 255
    np.testing.assert_array_equal(a.numpy(), augment_batch(images, seed, AUGMENT).numpy())
    assert not np.array_equal(a.numpy(), augment_batch(images, seed + 1, AUGMENT).numpy())


def _square_batch(n: int, size: int = 96, side: int = 32) -> np.ndarray:
    """``n`` black images with a white ``side`` x ``side`` square in the centre."""
    images = np.zeros((n, size, size, 3), np.float32)
    lo = (size - side) // 2
    images[:, lo : lo + side, lo : lo + side] = 255.0
    return images


def _square_geometry(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: the white area's side (pixels, from its area) and centroid x, y."""
    mask = images[..., 0] / 255.0
    area = mask.sum(axis=(1, 2))
    ys, xs = np.mgrid[: images.shape[1], : images.shape[2]]
    return np.sqrt(area), (mask * xs).sum(axis=(1, 2)) / area, (mask * ys).sum(axis=(1, 2)) / area


def test_augment_zoom_scales_about_the_centre():
    import tensorflow as tf

    images = _square_batch(32)
    out = augment_batch(tf.constant(images), tf.constant([3, 4], tf.int64), {"scale": 0.2}).numpy()
    side, cx, cy = _square_geometry(out)
    assert np.all(side > 32 * 0.8 - 1) and np.all(side < 32 * 1.2 + 1)  # zoom factor in [0.8, 1.2]
    assert side.max() - side.min() > 5  # different per image
    np.testing.assert_allclose(cx, 47.5, atol=0.5)  # about the centre: the square stays put
    np.testing.assert_allclose(cy, 47.5, atol=0.5)


def test_augment_shift_moves_within_bounds_and_leaves_other_draws_alone():
    import tensorflow as tf

    images = _square_batch(32)
    seed = tf.constant([5, 6], tf.int64)
    out = augment_batch(tf.constant(images), seed, {"shift": 0.1}).numpy()
    side, cx, cy = _square_geometry(out)
    np.testing.assert_allclose(side, 32, atol=0.5)
    assert np.all(np.abs(cx - 47.5) <= 9.6 + 0.5) and np.all(np.abs(cy - 47.5) <= 9.6 + 0.5)
    assert np.abs(cx - 47.5).max() > 4 and np.abs(cy - 47.5).max() > 4
    # Scale and shift draw from their own seeds: the brightness each image gets is the same with
    # or without them (values kept mid-range, so nothing clips).
    mid = tf.random.stateless_uniform([8, 20, 20, 3], [1, 2], 60, 190)
    geometric = {"scale": 0.2, "shift": 0.1}
    brightened = augment_batch(mid, seed, {"brightness": 0.1}).numpy() - mid.numpy()
    both = augment_batch(mid, seed, {**geometric, "brightness": 0.1}).numpy()
    np.testing.assert_allclose(both - augment_batch(mid, seed, geometric).numpy(), brightened, atol=1e-3)
    assert np.abs(brightened).max() > 1


def test_load_images_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such image file"):
        load_images([tmp_path / "missing.jpg"], 16)


# ---------------------------------------------------------------------------- one call


def _data_cfg(path: Path, extract_dir: Path, limit: int | None = None):
    cfg = group_node("data", "utkface")
    return OmegaConf.merge(cfg, {"path": str(path), "extract_dir": str(extract_dir), "limit": limit,
                                 "split": {"seed": 0}})


@pytest.mark.slow
def test_prepare_dataset_and_statistics(tmp_path, fake_utkface):
    archive = Path(shutil.make_archive(str(tmp_path / "UTKFace"), "gztar", tmp_path, "UTKFace"))
    reb = group_node("rebalance", "oversample")
    prepared = prepare_dataset(_data_cfg(archive, tmp_path / "cache", limit=50), reb, tmp_path / "run")
    frame = prepared.frame
    assert len(frame) == 50 and {"split", "copies", "weight"} <= set(frame.columns)
    split_csv = pd.read_csv(tmp_path / "run" / "split.csv")
    assert list(split_csv.columns) == ["image", "split", "copies"] and len(split_csv) == 50
    summary = write_statistics(prepared, tmp_path / "run" / "statistics", formats=("png",), dpi=50)
    for name in PLOTS:
        assert (tmp_path / "run" / "statistics" / f"{name}.png").stat().st_size > 1000
    written = json.loads((tmp_path / "run" / "statistics" / "data_summary.json").read_text())
    assert written["images_used"] == 50 and sum(written["split_images"].values()) == 50
    assert written["split_images_after_rebalancing"]["train"] == int(frame.loc[frame.split == "train", "copies"].sum())
    assert summary["plots"] == written["plots"]


# ---------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_archive_index_and_split(utkface_subset, subset_cache):
    """Real members of the shared archive (conftest's fixed subset: every 20th image and the
    release's flaws), extracted by the real code and indexed: flawed names skipped with their
    reason, the name with a space kept, byte-identical copies merged or dropped."""
    extract_dir = subset_cache / "data"  # extracted once, kept with the subset
    folder = resolve_image_folder(utkface_subset, extract_dir)
    assert (folder.parent / MARKER).is_file() and resolve_image_folder(utkface_subset, extract_dir) == folder
    index = index_images(folder, None, seed=42, cache_dir=extract_dir)
    assert index.files_seen > 1000 and len(index.frame) > 1000
    skipped = dict(index.skipped)
    for name in ("39_1_20170116174525125.jpg.chip.jpg", "61_1_20170109142408075.jpg.chip.jpg",
                 "61_1_20170109150557335.jpg.chip.jpg"):
        assert skipped[name] == "expected age_gender_race_date, got 3 fields"
    assert "24_0_1_20170116220224657 .jpg.chip.jpg" in set(index.frame["image"])
    assert index.duplicates_removed > 0 and index.conflicting_dropped
    assert index.frame["sha1"].is_unique
    split = split_index(index.frame, RATIOS, seed=42)
    assert split.groupby("sha1")["split"].nunique().max() == 1
    counts = split["split"].value_counts(normalize=True)
    assert all(math.isclose(counts[s], r, abs_tol=0.01) for s, r in RATIOS.items())


def test_training_batches_mix_ages_even_with_a_small_shuffle_buffer(fake_utkface):
    """Files sorted by age must not reach the model as batches of one age (a real bug we had)."""
    frame = utkface.index_images(fake_utkface).frame.sort_values("age").reset_index(drop=True)
    frame["copies"], frame["weight"] = 1, 1.0
    ds = make_dataset(frame, 16, batch_size=10, training=True, augment_cfg=None, shuffle_buffer=1, seed=3)
    first = next(iter(ds))[1]["age"].numpy().ravel()
    sorted_first = frame["age"].to_numpy()[:10]
    assert first.std() > 3 * max(sorted_first.std(), 1.0), (first, sorted_first)
