"""Quiet by default, everything with ``-v``: what the libraries underneath print.

The toolkit's own messages (its log lines, its one-line errors, where the results went) are
always shown. By default TensorFlow's C++ messages below warnings are held back
(``TF_CPP_MIN_LOG_LEVEL=2``) and Python shows third-party warnings as it does by default (not
DeprecationWarnings of library code). ``-v``/``--verbose`` lets TensorFlow log everything and
shows every warning once per place it is raised, DeprecationWarnings included.

Warnings the toolkit caused were fixed where they came from, not hidden: Keras' "``shuffle=True``
... will be ignored" (``models.engine.loop`` passes ``shuffle=False``; the datasets shuffle themselves)
and "Your input ran out of data" (``data.pipeline`` states each epoch's length, which Keras
otherwise learns by running the first epoch until the data ends).

A few start-up lines that native code writes straight to the process's stderr, once per
process, ignoring ``TF_CPP_MIN_LOG_LEVEL`` (:data:`NATIVE_STARTUP_LINES`: TensorFlow's oneDNN
notice when it is imported, LiteRT's XNNPACK line when an interpreter is first planned) are
dropped as they are written (:func:`native_startup_lines_dropped`); anything else written
meanwhile is passed on.

The choice travels in ``FACEATTR_VERBOSE``, so the processes a command starts (the web app's
retrain job) are as quiet or as verbose as the command.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType

VERBOSE_ENV = "FACEATTR_VERBOSE"
#: Lines native libraries write to stderr once per process that tell a user nothing.
NATIVE_STARTUP_LINES = (
    re.compile(r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."),
    re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    re.compile(r"I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\. .*"),
)
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
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # errors and warnings only
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


@contextlib.contextmanager
def native_startup_lines_dropped(library: str) -> Iterator[None]:
    """Around the first call into ``library`` that prints its start-up lines (once per process):
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
                    if not any(p.fullmatch(line.strip()) for p in NATIVE_STARTUP_LINES)]
            if kept:
                os.write(2, "".join(kept).encode())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds the package ``name`` the usual way and runs its first import inside
    :func:`native_startup_lines_dropped`; then steps aside."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, fullname)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """``loader`` with its ``exec_module`` inside :func:`native_startup_lines_dropped`."""

    def __init__(self, loader: importlib.abc.Loader, library: str) -> None:
        self._loader, self._library = loader, library

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with native_startup_lines_dropped(self._library):
            self._loader.exec_module(module)

    def __getattr__(self, name: str):  # get_source, get_filename, ... as the real loader has them
        return getattr(self._loader, name)
