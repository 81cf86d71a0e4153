"""Damaged archives are refused before use: a flipped bit, corrupted bytes, a truncated, empty or
garbage file gives one DataError line naming the archive and leaves no extraction behind, and
an archive replaced under the same name is never served from its old extraction folder."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from conftest import make_fake_utkface
from faceattr.data import archive as archive_mod
from faceattr.data.archive import MARKER, resolve_image_folder
from faceattr.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 40


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of a valid ``.tar.gz``, ``.tar`` and ``.zip`` of 40 tiny JPEGs under ``UTKFace/``."""
    base = tmp_path_factory.mktemp("good")
    make_fake_utkface(base / "UTKFace", N_IMAGES)
    formats = {"tar.gz": "gztar", "tar": "tar", "zip": "zip"}
    return {kind: Path(shutil.make_archive(str(base / kind.replace(".", "_")), fmt, base, "UTKFace")).read_bytes()
            for kind, fmt in formats.items()}


def _write(tmp_path: Path, data: bytes, name: str = "UTKFace.tar.gz") -> Path:
    path = tmp_path / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _deflate_start(gz: bytes) -> int:
    """Offset of the compressed data in a gzip file (after its header and optional fields)."""
    assert gz[:3] == b"\x1f\x8b\x08"
    flags, pos = gz[3], 10
    if flags & 4:  # FEXTRA
        pos += 2 + int.from_bytes(gz[pos:pos + 2], "little")
    for bit in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            pos = gz.index(b"\0", pos) + 1
    return pos + (2 if flags & 2 else 0)  # FHCRC


def _refused(path: Path, extract_dir: Path, problem: str = r"(corrupt|truncated) archive") -> str:
    """Assert ``path`` is refused with one line naming it and the problem, and nothing is left behind."""
    with pytest.raises(DataError, match=rf"{path.name}: {problem}") as info:
        resolve_image_folder(path, extract_dir)
    message = str(info.value)
    assert "\n" not in message and message.endswith("download it again")
    leftovers = sorted(p.name for p in extract_dir.iterdir()) if extract_dir.exists() else []
    assert leftovers == []  # no folder marked complete, no temporary folder
    return message


def _images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.jpg"))


def test_good_archives_extract_whole(tmp_path, good):
    for kind, data in good.items():
        folder = resolve_image_folder(_write(tmp_path, data, f"UTKFace.{kind}"), tmp_path / "x" / kind)
        assert len(_images(folder)) == N_IMAGES
        marker = json.loads((folder.parent / MARKER).read_text())
        assert marker["size"] == len(data) and len(marker["sha256"]) == 64


def _inflates_the_same(data: bytearray, offset: int) -> bool:
    """Whether flipping bit 2 of ``data[offset]`` leaves the gzip stream's content and checks intact."""
    flipped = bytearray(data)
    flipped[offset] ^= 0x04
    try:
        return gzip.decompress(bytes(flipped)) == gzip.decompress(bytes(data))
    except (OSError, EOFError, zlib.error):
        return False


@pytest.mark.parametrize("where", ["start", "middle", "end", "crc", "length"])
def test_flipped_bit_in_tar_gz_is_refused(tmp_path, good, where):
    data = bytearray(good["tar.gz"])
    offset = {"start": _deflate_start(data) + 3, "middle": len(data) // 2, "end": len(data) - 8 - 3,
              "crc": len(data) - 8 + 1, "length": len(data) - 4}[where]
    if where == "end":  # the last deflate bytes hold padding bits a flip may leave without effect:
        while _inflates_the_same(data, offset):  # take the nearest earlier byte whose flip matters
            offset -= 1
    data[offset] ^= 0x04
    message = _refused(_write(tmp_path, bytes(data)), tmp_path / "extract")
    if where in ("crc", "length"):
        assert "check failed" in message


def test_64_corrupted_bytes_are_refused(tmp_path, good):
    data = bytearray(good["tar.gz"])
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    _refused(_write(tmp_path, bytes(data)), tmp_path / "extract")


@pytest.mark.parametrize("keep", ["two thirds", "all but the trailer", "all but one byte"])
def test_truncated_tar_gz_is_refused(tmp_path, good, keep):
    data = good["tar.gz"]
    size = {"two thirds": len(data) * 2 // 3, "all but the trailer": len(data) - 8,
            "all but one byte": len(data) - 1}[keep]
    _refused(_write(tmp_path, data[:size]), tmp_path / "extract", r"truncated archive")


def test_empty_file_is_refused(tmp_path):
    _refused(_write(tmp_path, b""), tmp_path / "extract", r"empty file")


@pytest.mark.parametrize("garbage", [b"<html>404 Not Found</html>\n" * 200, b"\x1f\x8b" + bytes(range(256)) * 4])
def test_garbage_named_tar_gz_is_refused(tmp_path, garbage):
    _refused(_write(tmp_path, garbage), tmp_path / "extract", r"(not a tar|corrupt|truncated) archive")


def test_plain_tar_with_a_damaged_header_is_refused(tmp_path, good):
    data = bytearray(good["tar"])
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        header = tar.getmembers()[N_IMAGES // 2].offset  # a member header in the middle
    data[header + 3] ^= 0x20  # its name changes, so its header checksum no longer matches
    _refused(_write(tmp_path, bytes(data), "UTKFace.tar"), tmp_path / "extract", r"corrupt archive")


def test_plain_tar_cut_at_a_member_boundary_is_refused(tmp_path, good):
    data = good["tar"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        cut = tar.getmembers()[N_IMAGES // 2].offset  # the archive ends just before this member
    _refused(_write(tmp_path, data[:cut], "UTKFace.tar"), tmp_path / "extract", r"truncated archive")


@pytest.mark.parametrize("where", ["first byte", "middle"])
@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_corrupted_zip_member_is_refused(tmp_path, method, where):
    make_fake_utkface(tmp_path / "UTKFace", N_IMAGES)
    path = tmp_path / "data" / "UTKFace.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for image in sorted((tmp_path / "UTKFace").iterdir()):
            zf.write(image, f"UTKFace/{image.name}")
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[N_IMAGES // 2]
    data = bytearray(path.read_bytes())
    name_len, extra_len = (int.from_bytes(data[info.header_offset + i:info.header_offset + i + 2], "little")
                           for i in (26, 28))
    start = info.header_offset + 30 + name_len + extra_len  # the member's (compressed) bytes
    data[start + (0 if where == "first byte" else info.compress_size // 2)] ^= 0x02
    path.write_bytes(bytes(data))
    message = _refused(path, tmp_path / "extract", r"corrupt archive")
    assert info.filename in message  # names the damaged member


def test_replaced_archive_with_same_size_and_time_is_extracted_afresh(tmp_path):
    """A copy that keeps size and modification time (``cp -p``, rsync) but not the content."""
    make_fake_utkface(tmp_path / "a" / "UTKFace", N_IMAGES)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    old = sorted((tmp_path / "b" / "UTKFace").iterdir())[0]
    new = old.with_name("9" + old.name[1:])  # same name length: the tar has the same size
    assert new.name != old.name
    old.rename(new)
    first = Path(shutil.make_archive(str(tmp_path / "first"), "tar", tmp_path / "a", "UTKFace"))
    second = Path(shutil.make_archive(str(tmp_path / "second"), "tar", tmp_path / "b", "UTKFace"))
    assert first.stat().st_size == second.stat().st_size

    path, extract_dir = tmp_path / "data" / "UTKFace.tar", tmp_path / "extract"
    path.parent.mkdir()
    shutil.copy2(first, path)
    folder = resolve_image_folder(path, extract_dir)
    assert old.name in _images(folder)
    mtime = path.stat().st_mtime_ns

    shutil.copy(second, tmp_path / "incoming.tar")
    os.replace(tmp_path / "incoming.tar", path)
    os.utime(path, ns=(mtime, mtime))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (len(first.read_bytes()), mtime)
    fresh = resolve_image_folder(path, extract_dir)
    assert fresh.parent != folder.parent
    assert new.name in _images(fresh) and old.name not in _images(fresh)
    assert old.name in _images(folder)  # the old folder is left alone (a running job may read it)
    assert resolve_image_folder(path, extract_dir) == fresh


def test_unchanged_archive_is_reused_without_reading_it(tmp_path, good, monkeypatch):
    path, extract_dir = _write(tmp_path, good["tar.gz"]), tmp_path / "extract"
    folder = resolve_image_folder(path, extract_dir)

    def fail(*args, **kwargs):
        raise AssertionError("the archive was read again")

    with monkeypatch.context() as m:
        m.setattr(archive_mod, "_sha256_file", fail)
        m.setattr(archive_mod, "_extract_tar", fail)
        assert resolve_image_folder(path, extract_dir) == folder

    mtime = path.stat().st_mtime_ns
    # The same bytes copied over it with the old time, then a fresh copy with a new time (a new
    # download, a data folder mounted anew): each hashed once and reused, then fast again, never
    # extracted a second time beside the old folder.
    for new_time in (mtime, mtime + 10**9):
        (tmp_path / "copy.tar.gz").write_bytes(good["tar.gz"])
        os.replace(tmp_path / "copy.tar.gz", path)
        os.utime(path, ns=(new_time, new_time))
        with monkeypatch.context() as m:
            m.setattr(archive_mod, "_extract_tar", fail)
            assert resolve_image_folder(path, extract_dir) == folder
            m.setattr(archive_mod, "_sha256_file", fail)
            assert resolve_image_folder(path, extract_dir) == folder
        assert [p.name for p in extract_dir.iterdir()] == [folder.parent.name]

    # Other bytes of the same size under a new time: extracted afresh into a folder of their own.
    other = bytearray(good["tar.gz"])
    other[len(other) // 2] ^= 0x04  # damaged: refused, and the good folder is left as it was
    (tmp_path / "copy.tar.gz").write_bytes(bytes(other))
    os.replace(tmp_path / "copy.tar.gz", path)
    with pytest.raises(DataError):
        resolve_image_folder(path, extract_dir)
    assert [p.name for p in extract_dir.iterdir()] == [folder.parent.name]


@pytest.mark.slow
def test_cli_reports_a_corrupt_archive_in_one_line(tmp_path, good):
    data = bytearray(good["tar.gz"])
    data[len(data) // 2] ^= 0x04
    path = _write(tmp_path, bytes(data), "BAD.tar.gz")
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "stats", "--data_path", str(path),
                           f"paths.cache={cache}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path}: corrupt archive (CRC check failed); download it again"], output
    data_dir = cache / "data"
    assert not data_dir.exists() or not [p for p in data_dir.iterdir() if p.is_dir()]
