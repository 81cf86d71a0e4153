"""Where ``run`` writes, checked before any work: the output file (predictions table or
annotated video) and the annotated-images folder must be writable, and an existing output is
never replaced silently (``run.overwrite=true`` allows it, with a warning)."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faceattr.errors import InputError

log = logging.getLogger(__name__)


def write_problem(path: Path, folder: bool = False) -> str | None:
    """Why the file ``path`` (or the folder, with ``folder=True``) can't be written, or None.

    Nothing is left behind: the nearest existing folder on the way is found (a file there is a
    problem) and a temporary file is made and removed in it, which catches read-only and
    pseudo file systems (``/proc``) that permission bits alone don't show.
    """
    probe = path if folder else path.parent
    while True:
        try:
            mode = os.stat(probe).st_mode
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                return "no existing folder above it"
            probe = probe.parent
        except OSError as exc:
            return f"{probe}: {exc.strerror or exc}"
    if not stat.S_ISDIR(mode):
        return f"{probe} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".faceattr-write-check-", dir=probe)
    except OSError as exc:
        return f"{probe} does not accept new files: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(name)
    return None


def output_path(value: Any, default: Path, suffixes: Sequence[str], overwrite: bool, what: str) -> Path:
    """``run.output`` (``value``; ``default`` when empty), checked before any work: a known
    suffix (one of ``suffixes``), not a folder, writable, and no silent overwrite.

    ``what`` names the output in messages ("predictions", "video"). Returns the path made
    absolute against the working folder, as it is written to. Raises ``InputError``.
    """
    path = Path(str(value)).expanduser() if value not in (None, "") else default
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{path}: unknown {what} output type {path.suffix or '(no suffix)'!r}; "
                         f"use {' or '.join(suffixes)}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name for the output")
    problem = write_problem(path)
    if problem is not None:
        raise InputError(f"{path}: cannot be written ({problem})")
    if path.exists():
        if not overwrite:
            raise InputError(f"{path}: already exists; choose another --output or set run.overwrite=true")
        log.warning("Overwriting %s (run.overwrite=true)", path)
    return path.absolute()  # a relative --output is relative to the working folder: said in full


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` with ``noun`` in the singular or the plural: "1 face", "3 faces", "0 images"."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
