"""Find the image folder of a dataset given as a folder or an archive, extracting archives
safely, verified and only once.

An archive ``data/UTKFace.tar.gz`` is extracted into ``<extract_dir>/UTKFace-<hash>/`` where
``<hash>`` is a short hash of the archive's absolute path, size, modification time and
content (sha256). Extraction goes into a temporary folder next to the target that is renamed
into place when complete, with a marker file inside recording the archive's path, size,
times, inode and sha256, so an interrupted or failed extraction is never mistaken for a
finished one.

Verification: the whole archive is read and checked before the extraction counts as
complete. For a compressed tar (gzip, and bzip2/xz by their magic bytes) the compressed
stream is read to its very end, so its checksums (gzip: CRC-32 and length of every member)
are checked; a plain tar must parse to its end-of-archive marker with nothing but zeros after
it. Every zip member is read whole, which checks its CRC-32. A corrupt, truncated, empty or
garbage archive raises :class:`~faceattr.errors.DataError` (one line: the archive and the
problem) and leaves nothing behind. A tar archive is read once: the sha256 is computed from
the same bytes that are decompressed; a zip (whose directory sits at its end) is hashed in a
read of its own.

Reuse: a finished folder is reused when its marker names the same archive path and size.
When the archive's modification time, inode and change time also match (nothing wrote to,
replaced or touched the file since), it is reused without reading the archive, so repeated
commands stay fast. Otherwise (a fresh copy or download of the same file, a data folder
mounted anew, a copy that kept the old modification time) the archive is hashed once more:
same content, the folder is reused and its marker updated, so the next command takes the fast
path again; different content, it is extracted afresh into a new folder. A different size
always gives a new folder. Old folders are never deleted (a running job may still read them).

Every member is checked before it is written: absolute names, ``..`` parts, names that would
resolve outside the target, symbolic and hard links, devices and fifos are refused with
:class:`~faceattr.errors.UnsafeArchiveError` and the partial extraction is removed. Tar
archives are additionally extracted with ``tarfile``'s ``"data"`` filter.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from faceattr.errors import DataError, UnsafeArchiveError

log = logging.getLogger(__name__)

#: Archive name endings understood, longest first (so ``.tar.gz`` wins over ``.gz``).
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar", ".zip")
#: Written inside a finished extraction folder; its presence means "complete".
MARKER = ".faceattr-extracted"
_IMAGE_SUFFIXES = (".jpg", ".jpeg")
_CHUNK = 1 << 20
_AGAIN = "download it again"


def resolve_image_folder(path: Path, extract_dir: Path) -> Path:
    """The folder holding the images of ``path`` (a folder or an archive).

    Args:
        path: a folder of images, or a ``.tar.gz``/``.tgz``/``.tar``/``.zip`` archive of one.
        extract_dir: where archives are extracted (one sub-folder per archive version).

    Returns:
        The folder with the images. A single top-level folder (like ``UTKFace/``) is
        descended into.

    Raises:
        DataError: ``path`` is missing, neither a folder nor a known archive, or an archive
            that is empty, truncated or corrupt.
        UnsafeArchiveError: an archive member is unsafe (see the module docstring).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return _descend(path)
    suffix = archive_suffix(path)
    if suffix is None:
        raise DataError(f"{path}: not a folder or a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    return _descend(extract_once(path, Path(extract_dir).expanduser(), suffix))


def archive_suffix(path: Path) -> str | None:
    """The archive ending of ``path`` (e.g. ``".tar.gz"``), or None if it isn't one."""
    name = path.name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), None)


def extract_once(archive: Path, extract_dir: Path, suffix: str) -> Path:
    """Extract and verify ``archive`` into its own folder under ``extract_dir`` unless done.

    Returns the extraction folder (``<extract_dir>/<stem>-<hash>``).

    Raises:
        DataError: the archive is empty, truncated, corrupt or changed while being read.
        UnsafeArchiveError: an archive member is unsafe.
    """
    archive = archive.resolve()
    st = archive.stat()
    if st.st_size == 0:
        raise DataError(f"{archive}: empty file (0 bytes), not an archive; {_AGAIN}")
    stem = archive.name[: -len(suffix)]
    found = _find_extraction(archive, st, extract_dir, stem)
    if found is not None:
        return found

    extract_dir.mkdir(parents=True, exist_ok=True)
    log.info("extracting and verifying %s into %s (once)", archive, extract_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-partial-", dir=extract_dir))
    try:
        if suffix == ".zip":
            digest, nbytes = _sha256_file(archive)
            _extract_zip(archive, tmp)
        else:
            digest, nbytes = _extract_tar(archive, tmp)
        if nbytes != st.st_size or _identity(archive.stat()) != _identity(st):
            raise DataError(f"{archive}: the file changed while it was being extracted; try again")
        (tmp / MARKER).write_text(json.dumps(_marker(archive, st, digest), indent=2))
        key = hashlib.sha1(f"{archive}|{st.st_size}|{st.st_mtime_ns}|{digest}".encode()).hexdigest()[:10]
        target = extract_dir / f"{stem}-{key}"
        try:
            os.rename(tmp, target)  # atomic: the folder appears complete or not at all
        except OSError:
            if (target / MARKER).is_file():  # a concurrent run (e.g. a sweep job) finished first
                shutil.rmtree(tmp, ignore_errors=True)
            else:  # a folder without marker, not made by this code: replace it
                log.warning("%s: replacing unfinished extraction folder %s", archive, target)
                shutil.rmtree(target)
                os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s: extracted into %s", archive, target)
    return target


# ---------------------------------------------------------------------------- reuse


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes whenever a file is written, replaced or touched."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _marker(archive: Path, st: os.stat_result, digest: str) -> dict[str, Any]:
    return {"archive": str(archive), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "inode": st.st_ino, "sha256": digest}


def _completed(extract_dir: Path, stem: str) -> list[tuple[Path, dict[str, Any]]]:
    """The finished extraction folders of archives named ``<stem>.*``, with their markers."""
    if not extract_dir.is_dir():
        return []
    found = []
    for folder in sorted(extract_dir.glob(f"{stem}-*")):
        try:
            marker = json.loads((folder / MARKER).read_text())
        except (OSError, ValueError):  # no marker (unfinished) or an unreadable one
            continue
        if isinstance(marker, dict):
            found.append((folder, marker))
    return found


def _find_extraction(archive: Path, st: os.stat_result, extract_dir: Path, stem: str) -> Path | None:
    """A finished extraction of exactly this archive's content, or None (see the module docstring)."""
    candidates = []
    for folder, marker in _completed(extract_dir, stem):
        if (marker.get("archive"), marker.get("size")) != (str(archive), st.st_size) or \
                not isinstance(marker.get("sha256"), str):
            continue  # another archive, another version, or written before archives were verified
        if (marker.get("mtime_ns"), marker.get("ctime_ns"), marker.get("inode")) == (
                st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            log.debug("%s: reusing extraction in %s", archive, folder)
            return folder
        candidates.append((folder, marker))
    if not candidates:
        return None
    log.info("%s: same size as when extracted, but the file was copied, replaced or touched since; "
             "comparing its content", archive)
    digest, _ = _sha256_file(archive)
    for folder, marker in candidates:
        if marker["sha256"] == digest:
            _write_marker(folder, _marker(archive, st, digest))  # the next call takes the fast path
            log.debug("%s: content unchanged, reusing extraction in %s", archive, folder)
            return folder
    if any(marker.get("mtime_ns") == st.st_mtime_ns for _, marker in candidates):
        log.warning("%s: content differs from its earlier extraction with the same size and modification "
                    "time; extracting it afresh", archive)
    return None


def _write_marker(folder: Path, marker: dict[str, Any]) -> None:
    """Replace the marker of a finished folder atomically (it never goes missing meanwhile)."""
    fd, tmp = tempfile.mkstemp(prefix=f"{MARKER}.", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(marker, indent=2))
        os.replace(tmp, folder / MARKER)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256_file(path: Path) -> tuple[str, int]:
    """The sha256 (hex) and length of a file's bytes."""
    h = hashlib.sha256()
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


# ---------------------------------------------------------------------------- reading


class _Reader:
    """A read-only binary stream over another that counts (and optionally hashes) what passes.

    ``data_end`` is the position just past the last non-zero byte read so far, which tells
    whether anything but zero padding follows a tar's end-of-archive marker.
    """

    def __init__(self, f: BinaryIO | io.BufferedIOBase, hasher: Any = None) -> None:
        self._f = f
        self._hasher = hasher
        self.pos = 0
        self.data_end = 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if data:
            if self._hasher is not None:
                self._hasher.update(data)
            nonzero = len(data.rstrip(b"\0"))
            if nonzero:
                self.data_end = self.pos + nonzero
            self.pos += len(data)
        return data

    def drain(self) -> None:
        """Read to the end (a compressed stream checks its checksums on the way)."""
        while self.read(_CHUNK):
            pass


def _decompressor(f: _Reader, head: bytes) -> io.BufferedIOBase | None:
    """A checking decompressing reader for the compressed stream ``f`` (by its first bytes), or
    None for an uncompressed one."""
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(f)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f)
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_error(archive: Path, exc: BaseException, started: bool) -> DataError:
    """The one-line error for an exception raised while reading ``archive``."""
    msg = _one_line(exc)
    if isinstance(exc, gzip.BadGzipFile):
        if msg.startswith("CRC check failed"):
            msg = "CRC check failed"
        elif msg.startswith("Incorrect length"):
            msg = "length check failed"
        elif msg.startswith("Not a gzipped file"):
            msg = "unexpected data after the compressed stream"
        return DataError(f"{archive}: corrupt archive ({msg}); {_AGAIN}")
    if isinstance(exc, (zlib.error, lzma.LZMAError)) or msg.startswith("zlib error"):
        return DataError(f"{archive}: corrupt archive (invalid compressed data); {_AGAIN}")
    if isinstance(exc, EOFError) or "unexpected end of data" in msg:
        return DataError(f"{archive}: truncated archive (it ends early); {_AGAIN}")
    if isinstance(exc, tarfile.TarError):
        if not started:
            return DataError(f"{archive}: not a tar archive ({msg}); {_AGAIN}")
        return DataError(f"{archive}: corrupt archive ({msg}); {_AGAIN}")
    if isinstance(exc, OSError) and exc.errno is None:  # not a system error: e.g. bz2's "Invalid data stream"
        return DataError(f"{archive}: corrupt archive ({msg}); {_AGAIN}")
    return DataError(f"{archive}: cannot extract archive ({msg})")


def _check_name(archive: Path, name: str, target: Path) -> None:
    """Refuse member names that are absolute, contain ``..`` or resolve outside ``target``."""
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    if posix.startswith("/") or (posix[:1].isalpha() and posix[1:2] == ":"):
        raise UnsafeArchiveError(f"{archive}: archive member {name!r} has an absolute path")
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: archive member {name!r} would land outside the target")
    resolved = (target / posix).resolve()
    if not resolved.is_relative_to(target.resolve()):
        raise UnsafeArchiveError(f"{archive}: archive member {name!r} would land outside the target")


def _check_tar_member(archive: Path, m: tarfile.TarInfo, target: Path) -> None:
    _check_name(archive, m.name, target)
    if m.issym() or m.islnk():
        raise UnsafeArchiveError(f"{archive}: archive member {m.name!r} is a link")
    if not (m.isreg() or m.isdir()):
        raise UnsafeArchiveError(f"{archive}: archive member {m.name!r} is a device, fifo or special file")


def _extract_tar(archive: Path, target: Path) -> tuple[str, int]:
    """Extract a (compressed) tar in one read of the file, checking it to the end.

    Returns the sha256 of the archive's bytes and their number.
    """
    hasher = hashlib.sha256()
    started = False
    with archive.open("rb") as f:
        head = f.read(8)
        f.seek(0)
        raw = _Reader(f, hasher)
        try:
            unpacked = _decompressor(raw, head)
            tar_bytes = _Reader(unpacked) if unpacked is not None else raw
            try:
                with tarfile.open(fileobj=tar_bytes, mode="r|") as tar:
                    started = True
                    for member in tar:
                        _check_tar_member(archive, member, target)
                        tar.extract(member, target, filter="data")
                    end = tar.offset  # where the member headers stopped
            except (tarfile.TarError, UnsafeArchiveError) as exc:
                # A damaged compressed stream decodes into odd headers and members: when its
                # checksums fail on the way to its end, that is the error to report.
                if unpacked is not None and "zlib error" not in str(exc):
                    tar_bytes.drain()
                raise
            tar_bytes.drain()  # to the end of the compressed stream: its checksums are checked here
            raw.drain()
        except tarfile.FilterError as exc:
            raise UnsafeArchiveError(f"{archive}: refused by the tar data filter: {exc}") from exc
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
            raise _read_error(archive, exc, started) from exc
    if tar_bytes.data_end > end:  # tarfile stops quietly at an unreadable header
        raise DataError(f"{archive}: corrupt archive (unreadable tar header at byte {end} of the tar data); "
                        f"{_AGAIN}")
    if tar_bytes.pos < end + tarfile.BLOCKSIZE:
        raise DataError(f"{archive}: truncated archive (no end-of-archive marker after {end} bytes of tar data); "
                        f"{_AGAIN}")
    return hasher.hexdigest(), raw.pos


def _extract_zip(archive: Path, target: Path) -> None:
    """Extract a zip, reading every member whole (zipfile checks each one's CRC-32)."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        if _one_line(exc) == "File is not a zip file":
            raise DataError(f"{archive}: not a zip archive, or a truncated one (no zip directory at its end); "
                            f"{_AGAIN}") from exc
        raise DataError(f"{archive}: corrupt archive ({_one_line(exc)}); {_AGAIN}") from exc
    except (EOFError, OSError) as exc:
        raise _read_error(archive, exc, True) from exc
    with zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(archive, info.filename, target)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip doesn't say
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(f"{archive}: archive member {info.filename!r} is a link or special file")
        for info in infos:
            try:
                zf.extract(info, target)
            except zipfile.BadZipFile as exc:  # e.g. "Bad CRC-32 for file '...'" (names the member)
                msg = _one_line(exc)
                if info.filename not in msg:
                    msg = f"member {info.filename!r}: {msg}"
                raise DataError(f"{archive}: corrupt archive ({msg}); {_AGAIN}") from exc
            except NotImplementedError as exc:  # e.g. an unsupported compression method
                raise DataError(f"{archive}: cannot extract archive member {info.filename!r} "
                                f"({_one_line(exc)})") from exc
            except (zlib.error, lzma.LZMAError) as exc:
                raise DataError(f"{archive}: corrupt archive (member {info.filename!r}: invalid compressed data); "
                                f"{_AGAIN}") from exc
            except EOFError as exc:
                raise DataError(f"{archive}: truncated archive (member {info.filename!r} ends early); "
                                f"{_AGAIN}") from exc
            except OSError as exc:
                raise _read_error(archive, exc, True) from exc


def _is_image(name: str) -> bool:
    return name.lower().endswith(_IMAGE_SUFFIXES)


def _descend(folder: Path) -> Path:
    """Follow a chain of single sub-folders (``x/UTKFace/``) down to the images."""
    while True:
        with os.scandir(folder) as listing:  # file types come with the listing: no stat per image
            entries = [e for e in listing if not e.name.startswith((".", "__MACOSX"))]
        subdirs = [e for e in entries if e.is_dir()]
        if len(subdirs) == 1 and not any(_is_image(e.name) for e in entries):
            folder = Path(subdirs[0].path)
        else:
            return folder
