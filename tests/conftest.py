"""Fixtures shared by the test files: a fake UTKFace folder of tiny random JPEGs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

#: The real dataset, one level above the project (skip tests that need it when absent).
SHARED_TARBALL = Path(__file__).resolve().parents[1].parent / "shared/data/UTKFace.tar.gz"


def make_fake_utkface(folder: Path, n: int, seed: int = 0, size: int = 32) -> list[Path]:
    """Write ``n`` random-noise JPEGs (``size`` x ``size``) named like UTKFace into ``folder``.

    Labels cycle so every gender, race and age bin occurs: image ``i`` has age
    ``AGES[i % len(AGES)]`` years, gender ``i % 2`` and race ``i % 5``. Every image has
    different bytes. Returns the paths, in order.
    """
    ages = (1, 5, 14, 23, 27, 35, 45, 58, 66, 85)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        path = folder / f"{ages[i % len(ages)]}_{i % 2}_{i % 5}_20170101{i:09d}.jpg.chip.jpg"
        assert cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.fixture
def fake_utkface(tmp_path: Path) -> Path:
    """A folder ``UTKFace/`` of 60 fake UTKFace images (see :func:`make_fake_utkface`)."""
    folder = tmp_path / "UTKFace"
    make_fake_utkface(folder, 60)
    return folder
