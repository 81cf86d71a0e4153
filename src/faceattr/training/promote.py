"""Promotion: ship a trained model into ``saved_model/<type>``, where ``run`` finds it.

Above both ``models.io`` (the folder) and ``inference.runtime`` (loading it as ``run`` does), since
a model is only swapped in after it has loaded as ``run`` would load it. Used by the ``promote``
command and by ``train``/``ensemble`` with ``promote=true``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from faceattr import writes
from faceattr.errors import ModelError
from faceattr.inference.runtime import open_runner
from faceattr.models.info import ModelInfo

log = logging.getLogger(__name__)


def promote(run_model_dir: Path, saved_models: Path, cache_dir: Path | None = None) -> Path:
    """Put a trained model at ``saved_models/<model_type>``, where ``run`` finds it.

    The folder is copied beside the target first (``.<type>.incoming-<pid>``), flushed to disk
    and loaded once as ``run`` loads it (``model_info.json``, the TensorFlow Lite file or the
    Keras model, one prediction); only then is it swapped in (``writes.swap_in``), so a reader
    sees the old model or the new one, never a mixture, and a folder that does not load changes
    nothing. The model shipped there before goes to ``saved_models/.previous/<type>-<time>``
    (``-1``, ``-2``... within one second: a backup is never moved into another), which is
    logged. A second promote of the same type waits for none: it is refused in one line.
    Ctrl-C or SIGTERM before the swap leaves everything as it was.
    """
    info = ModelInfo.read(run_model_dir)
    view = (info.ensemble or {}).get("view")
    if view is not None:  # one member's outputs alone (ensemble.view): a measuring aid, never a shipped model
        raise ModelError(f"{run_model_dir}: the view of ensemble member {view} (ensemble.view), made for weigh; "
                         "build the ensemble without ensemble.view to ship it")
    saved_models = Path(saved_models)
    target = saved_models / info.model_type
    if target.resolve() == Path(run_model_dir).resolve():
        raise ModelError(f"{run_model_dir}: already the shipped {info.model_type} model")
    staging = saved_models / f".{info.model_type}.incoming-{os.getpid()}"
    with writes.exclusive(target, "promote"), writes.terminate_as_interrupt():
        try:
            try:
                shutil.copytree(run_model_dir, staging)
                writes.fsync_tree(staging)
            except OSError as exc:
                raise writes.write_error(target, exc) from None
            check_loads(staging, shown_as=Path(run_model_dir), cache_dir=cache_dir)
            backup = None
            if target.exists():
                stamp = time.strftime("%Y%m%d-%H%M%S")
                backup = unique_backup(saved_models / ".previous", f"{info.model_type}-{stamp}")
            try:
                writes.swap_in(staging, target, backup)
            except OSError as exc:
                raise writes.write_error(target, exc) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if backup is not None:
        log.warning("Moved the previous shipped %s model to %s", info.model_type, backup)
        print(f"Previous shipped model kept at {backup}")
    print(f"Promoted {run_model_dir} to {target}")
    return target


def promote_as_configured(model_dir: Path, cfg) -> Path:
    """:func:`promote` ``model_dir`` into ``cfg.paths.saved_models``, loading it with
    ``cfg.paths.cache`` (the ``promote`` command, and ``train``/``ensemble`` with ``promote=true``)."""
    return promote(model_dir, Path(cfg.paths.saved_models), Path(cfg.paths.cache))


def check_loads(model_dir: Path, shown_as: Path | None = None, cache_dir: Path | None = None) -> None:
    """Load ``model_dir`` as ``run`` would (``inference.runtime.open_runner``, backend auto) and
    predict once on a blank (1, S, S, 3) batch; a ``ModelError`` naming ``shown_as`` (default
    ``model_dir``) if anything fails."""
    shown = str(shown_as or model_dir)
    try:
        runner, info = open_runner(Path(model_dir), "auto", cache_dir)
        outputs = runner(np.zeros((1, info.input_size, info.input_size, 3), np.float32))
        if not all(np.isfinite(np.asarray(v)).all() for v in outputs.values()):
            raise ModelError(f"{model_dir}: predicts NaN or infinity on a blank image")
    except ModelError as exc:
        raise ModelError(f"{str(exc).replace(str(model_dir), shown)} (nothing was promoted)") from None
    except Exception as exc:  # whatever a damaged file makes Keras or LiteRT raise
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ModelError(f"{shown}: does not load as run would load it ({type(exc).__name__}: {first}); "
                         "nothing was promoted") from None


def unique_backup(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name-1``, ``name-2``... : the first that doesn't exist yet."""
    candidate, k = folder / name, 1
    while candidate.exists() or candidate.is_symlink():
        candidate, k = folder / f"{name}-{k}", k + 1
    return candidate
