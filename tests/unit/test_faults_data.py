"""A damaged image in the training data is found when the data is indexed, by name, before any
training: a JPEG cut short (a copy or download that stopped) is skipped with its reason."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from conftest import make_fake_utkface
from faceattr.data.utkface import index_images, jpeg_problem


def photo_jpeg(progressive: bool) -> bytes:
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (5, 5), 0)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90,
                                            cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("progressive", [False, True])
def test_whole_jpegs_pass_and_every_cut_is_found(progressive):
    data = photo_jpeg(progressive)
    assert jpeg_problem(data) == ""
    for keep in (3, 200, len(data) // 2, len(data) - 2):
        assert "truncated JPEG" in jpeg_problem(data[:keep]), keep
    assert jpeg_problem(b"\x89PNG\r\n\x1a\n" + data) == "not a JPEG (bad magic bytes)"


def test_a_truncated_utkface_jpeg_is_skipped_by_name_before_training(tmp_path, caplog):
    folder = tmp_path / "UTKFace"
    paths = make_fake_utkface(folder, 20)
    cut = paths[7]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        index = index_images(folder, cache_dir=tmp_path / "cache")
    assert cut.name not in set(index.frame["image"]) and len(index.frame) == 19
    assert [(name, reason) for name, reason in index.skipped if "truncated" in reason] == [
        (cut.name, "truncated JPEG (its image data stops before the end-of-image marker)")]
    assert any(cut.name in r.getMessage() and "truncated JPEG" in r.getMessage() for r in caplog.records)
    # The hash cache remembers the verdict; a repaired file (new size and time) is read again.
    again = index_images(folder, cache_dir=tmp_path / "cache")
    assert [n for n, _ in again.skipped] == [cut.name]
    make_fake_utkface(tmp_path / "fresh", 20)
    cut.write_bytes((tmp_path / "fresh" / cut.name).read_bytes())
    assert len(index_images(folder, cache_dir=tmp_path / "cache").frame) == 20
