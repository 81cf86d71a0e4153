"""Find the image folder of a dataset given as a folder or an archive, extracting archives
safely and only once.

An archive ``data/UTKFace.tar.gz`` is extracted into
``<extract_dir>/UTKFace-<hash>/`` where ``<hash>`` is a short hash of the archive's absolute
path, size and modification time: a changed archive gets a fresh folder, an unchanged one
reuses the folder of the first call. Extraction goes into a temporary folder next to the
target that is renamed into place when complete (with a marker file inside), so an
interrupted extraction is never mistaken for a finished one.

Every member is checked before anything is written: absolute names, ``..`` parts, names
that would resolve outside the target, symbolic and hard links, devices and fifos are
refused with :class:`~faceattr.errors.UnsafeArchiveError`. Tar archives are additionally
extracted with ``tarfile``'s ``"data"`` filter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from faceattr.errors import DataError, UnsafeArchiveError

log = logging.getLogger(__name__)

#: Archive name endings understood, longest first (so ``.tar.gz`` wins over ``.gz``).
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar", ".zip")
#: Written inside a finished extraction folder; its presence means "complete".
MARKER = ".faceattr-extracted"
_IMAGE_SUFFIXES = (".jpg", ".jpeg")


def resolve_image_folder(path: Path, extract_dir: Path) -> Path:
    """The folder holding the images of ``path`` (a folder or an archive).

    Args:
        path: a folder of images, or a ``.tar.gz``/``.tgz``/``.tar``/``.zip`` archive of one.
        extract_dir: where archives are extracted (one sub-folder per archive version).

    Returns:
        The folder with the images. A single top-level folder (like ``UTKFace/``) is
        descended into.

    Raises:
        DataError: ``path`` is missing or neither a folder nor a known archive.
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
    """Extract ``archive`` into its own folder under ``extract_dir`` unless already done.

    Returns the extraction folder (``<extract_dir>/<stem>-<hash>``).
    """
    archive = archive.resolve()
    st = archive.stat()
    key = hashlib.sha1(f"{archive}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
    stem = archive.name[: -len(suffix)]
    target = extract_dir / f"{stem}-{key}"
    if (target / MARKER).is_file():
        log.debug("%s: reusing extraction in %s", archive, target)
        return target

    extract_dir.mkdir(parents=True, exist_ok=True)
    log.info("extracting %s into %s (once)", archive, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-partial-", dir=extract_dir))
    try:
        if suffix == ".zip":
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
        marker = {"archive": str(archive), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
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
    return target


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


def _extract_tar(archive: Path, target: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                _check_name(archive, m.name, target)
                if m.issym() or m.islnk():
                    raise UnsafeArchiveError(f"{archive}: archive member {m.name!r} is a link")
                if not (m.isreg() or m.isdir()):
                    raise UnsafeArchiveError(f"{archive}: archive member {m.name!r} is a device, fifo or special file")
            tar.extractall(target, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"{archive}: refused by the tar data filter: {exc}") from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot read archive ({exc})") from exc


def _extract_zip(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_name(archive, info.filename, target)
                kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip doesn't say
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise UnsafeArchiveError(f"{archive}: archive member {info.filename!r} is a link or special file")
            zf.extractall(target, members=infos)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive}: cannot read archive ({exc})") from exc


def _is_image(name: str) -> bool:
    return name.lower().endswith(_IMAGE_SUFFIXES)


def _descend(folder: Path) -> Path:
    """Follow a chain of single sub-folders (``x/UTKFace/``) down to the images."""
    while True:
        entries = [e for e in folder.iterdir() if not e.name.startswith((".", "__MACOSX"))]
        subdirs = [e for e in entries if e.is_dir()]
        if len(subdirs) == 1 and not any(_is_image(e.name) for e in entries):
            folder = subdirs[0]
        else:
            return folder
