"""One write discipline for what the toolkit writes.

- :func:`replacing`: the new content goes to a temporary file beside the target (same folder,
  so same file system), is flushed to disk (``fsync``) and renamed over the target in one step;
  a reader sees the old file or the new one, never half of one. Any failure (a full disk, a
  signal turned into an exception) removes the temporary and leaves the target as it was.
- :func:`exclusive`: a lock file beside the target (``fcntl`` lock, released by the kernel
  when the holder dies) stops a second command writing the same target, in one line naming
  the holder.
- :func:`write_error`: an ``OSError`` met while writing becomes one line naming the path and
  what to change (:class:`faceattr.errors.WriteError`).

Text is written as UTF-8 whatever the locale says; file names that the locale could not decode
(``surrogateescape``) are written back as the bytes they were.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from faceattr.errors import WriteError

#: The encoding of every text file the toolkit writes, and how undecodable names are kept.
ENCODING = "utf-8"
ENCODING_ERRORS = "surrogateescape"

_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EROFS: "read-only file system; write elsewhere (hydra.run.dir=..., or --output for run)",
    errno.EACCES: "permission denied; write elsewhere or change the folder's permissions",
    errno.EPERM: "permission denied; write elsewhere or change the folder's permissions",
}


def write_error(path: Path | str, exc: OSError) -> WriteError:
    """``exc``, met while writing ``path``, as one line: the path, the problem, what to change."""
    what = _ADVICE.get(exc.errno) or (exc.strerror or str(exc)).lower()
    return WriteError(f"{path}: cannot be written: {what}")


def fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename inside it) to disk; a no-op where not supported."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary_beside(path: Path) -> Path:
    """A temporary name beside ``path`` (hidden, with this process's id: two writers never share it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it fully inside the ``with`` block. On a
    clean exit it is fsynced and renamed over ``path``; on any exception it is removed and
    ``path`` is untouched. An ``OSError`` becomes a :class:`WriteError` naming ``path``."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8 through :func:`replacing`: never half a file."""
    with replacing(path) as tmp, open(tmp, "w", encoding=ENCODING, errors=ENCODING_ERRORS, newline="") as fh:
        fh.write(text)


def open_text(path: Path, mode: str = "w"):
    """``open(path, mode)`` for a text file the toolkit writes: UTF-8, names kept as their bytes,
    ``newline=""`` (the csv module's line ends)."""
    return open(path, mode, encoding=ENCODING, errors=ENCODING_ERRORS, newline="")


def lock_path(target: Path) -> Path:
    """The lock file of ``target``: ``.<name>.lock`` beside it."""
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive(target: Path | str, what: str = "command") -> Iterator[None]:
    """Hold the lock of ``target`` for the ``with`` block, or refuse in one line naming the holder.

    The lock file stays (holding only the holder's pid and command line); the lock itself is
    the kernel's and ends with the holder, so a killed writer never blocks the next one.
    """
    target = Path(target)
    lock = lock_path(target)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a+", encoding=ENCODING, errors=ENCODING_ERRORS)  # noqa: SIM115 (held for the block)
    except OSError as exc:
        raise write_error(target, exc) from None
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise WriteError(f"{target}: in use by another {what} ({holder}); wait for it to finish "
                             "or choose another path") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n")
        fh.flush()
        yield
    finally:
        fh.close()
