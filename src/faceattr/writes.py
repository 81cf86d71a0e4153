"""One write discipline for what the toolkit writes.

- :func:`replacing`: the new content goes to a temporary file beside the target (same folder,
  so same file system), is flushed to disk (``fsync``) and renamed over the target in one step;
  a reader sees the old file or the new one, never half of one. Any failure (a full disk, a
  signal turned into an exception) removes the temporary and leaves the target as it was.
- :func:`exclusive`: a lock file beside the target (``fcntl`` lock, released by the kernel
  when the holder dies) stops a second command writing the same target, in one line naming
  the holder.
- :func:`swap_in`: a whole folder (a model) replaces another with one atomic exchange of
  names where the file system allows it (``renameat2(RENAME_EXCHANGE)``), so a reader sees
  the old folder or the new one, never a mixture; Ctrl-C and SIGTERM wait for the swap.
- :func:`terminate_as_interrupt`: SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``,
  exit code 143) where it lands, so the same clean-ups run as for Ctrl-C.
- :func:`write_error`: an ``OSError`` met while writing becomes one line naming the path and
  what to change (:class:`faceattr.errors.WriteError`).

Text is written as UTF-8 whatever the locale says; file names that the locale could not decode
(``surrogateescape``) are written back as the bytes they were.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import math
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


#: The errors a write meets that the user fixes by making room or writing elsewhere.
WRITE_ERRNOS = frozenset(_ADVICE)


def write_error(path: Path | str, exc: OSError) -> WriteError:
    """``exc``, met while writing ``path``, as one line: the path, the problem, what to change."""
    what = _ADVICE.get(exc.errno) or (exc.strerror or str(exc)).lower()
    return WriteError(f"{path}: cannot be written: {what}")


def fsync_path(path: Path) -> None:
    """Flush a file's bytes, or a folder's entries, to disk by its path; OSError where that fails."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename inside it) to disk; a no-op where not supported."""
    with contextlib.suppress(OSError):
        fsync_path(folder)


def temporary_beside(path: Path) -> Path:
    """A temporary name beside ``path`` (hidden, with this process's id: two writers never share it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replacing(path: Path | str, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it fully inside the ``with`` block. On a
    clean exit it is fsynced (``durable``; False for many small files that a rerun remakes, such
    as annotated copies) and renamed over ``path``; on any exception it is removed and ``path``
    is untouched. An ``OSError`` becomes a :class:`WriteError` naming ``path``."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
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


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (nested in dicts, lists, tuples; numpy scalars
    too) replaced by None: what JSON can hold."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if getattr(value, "dtype", None) is not None and getattr(value, "ndim", None) == 0 and value.dtype.kind == "f":
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(value: Any, indent: int = 2) -> str:
    """``value`` as JSON that every reader accepts (never ``NaN`` or ``Infinity``: see :func:`finite`)."""
    return json.dumps(finite(value), indent=indent, allow_nan=False, ensure_ascii=False, default=str) + "\n"


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

    The lock is the kernel's (``flock`` on ``.<name>.lock`` beside ``target``, which holds the
    holder's pid and command line) and ends with the holder, so a killed writer never blocks the
    next one; the holder removes the file when done, so nothing is left behind.
    """
    target = Path(target)
    lock = lock_path(target)
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fh = open(lock, "a+", encoding=ENCODING, errors=ENCODING_ERRORS)  # noqa: SIM115 (held for the block)
        except OSError as exc:
            raise write_error(target, exc) from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise WriteError(f"{target}: in use by another {what} ({holder}); wait for it to finish "
                             "or choose another path") from None
        try:
            if os.fstat(fh.fileno()).st_ino == os.stat(lock).st_ino:
                break  # the file we locked is still the lock file (its last holder did not remove it meanwhile)
        except FileNotFoundError:
            pass
        fh.close()
    try:
        with contextlib.suppress(OSError):  # who holds it, for the next one's message; a full disk leaves it out
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n")
            fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still held: the next writer locks a new file
        with contextlib.suppress(OSError):  # (a holder line that a full disk refused)
            fh.close()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so clean-ups run; exit code 143 (128 + 15)."""

    exit_code = 128 + signal.SIGTERM


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` instead of ending the process at once
    (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done (a few renames), then arrive as usual."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, and the folders themselves, to disk."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(Path(root) / name, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_folder(Path(root))


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, changing nothing, where the system or file system cannot; raises ``OSError``
    for any other failure."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_in(new: Path, target: Path, backup: Path | None) -> None:
    """Put the folder ``new`` at ``target``; what was at ``target`` moves to ``backup`` (its
    parent made), or is removed when ``backup`` is None. Signals wait for the renames.

    Where :func:`exchange` works a reader of ``target`` sees the old folder or the new one and
    never a gap; elsewhere two renames leave ``target`` missing for an instant, never mixed.
    """
    new, target = Path(new), Path(target)
    if backup is not None:
        backup.parent.mkdir(parents=True, exist_ok=True)
    with signals_held():
        if not target.exists():
            os.rename(new, target)
        elif exchange(new, target):  # ``new`` now names the previous folder
            if backup is not None:
                os.rename(new, backup)
        else:
            os.rename(target, backup if backup is not None else temporary_beside(target))
            os.rename(new, target)
        fsync_folder(target.parent)
    if backup is None:
        for leftover in (new, temporary_beside(target)):
            shutil.rmtree(leftover, ignore_errors=True)
