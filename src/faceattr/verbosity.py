"""Quiet by default, everything with ``-v``: what the libraries underneath print.

The toolkit's own messages (its log lines, its one-line errors, where the results went) are
always shown. By default TensorFlow's C++ start-up messages below warnings are held back
(``TF_CPP_MIN_LOG_LEVEL=2``) and Python shows third-party warnings as it does by default (not
DeprecationWarnings of library code). ``-v``/``--verbose`` lets TensorFlow log everything and
shows every warning once per place it is raised, DeprecationWarnings included.

Warnings the toolkit caused were fixed where they came from, not hidden: Keras' "``shuffle=True``
... will be ignored" (``training.loop`` passes ``shuffle=False``; the datasets shuffle themselves)
and "Your input ran out of data" (``data.pipeline`` states each epoch's length, which Keras
otherwise learns by running the first epoch until the data ends).

LiteRT's one start-up line ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU."), written
by native code straight to the process's stderr, is dropped as it is written
(:func:`native_startup_lines_dropped`); anything else written meanwhile is passed on.

The choice travels in ``FACEATTR_VERBOSE``, so the processes a command starts (parallel sweep
jobs, the web app's retrain job) are as quiet or as verbose as the command.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "FACEATTR_VERBOSE"
#: Lines native libraries write to stderr once per process that tell a user nothing.
NATIVE_STARTUP_LINES = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)
_native_lock = threading.Lock()
_native_started: set[str] = set()


def is_verbose() -> bool:
    """Whether ``-v`` was given to this command or to the one that started this process."""
    return os.environ.get(VERBOSE_ENV) == "1"


def set_verbosity(verbose: bool) -> None:
    """Set this process (and the processes it starts) quiet or verbose; call before TensorFlow loads."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        warnings.simplefilter("default")  # every warning, once per place it is raised
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # errors and warnings only


@contextlib.contextmanager
def native_startup_lines_dropped(library: str) -> Iterator[None]:
    """Around the first call into ``library`` that prints its start-up line (once per process):
    the process's stderr (file descriptor 2, where native code writes) goes to a temporary file,
    then everything in it but :data:`NATIVE_STARTUP_LINES` is written on. Verbose, or after the
    first time for ``library``, it changes nothing. One thread at a time."""
    if is_verbose() or library in _native_started:
        yield
        return
    with _native_lock, tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            _native_started.add(library)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines(keepends=True)
                    if line.strip() not in NATIVE_STARTUP_LINES]
            if kept:
                os.write(2, "".join(kept).encode())
