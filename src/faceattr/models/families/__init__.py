"""The model-family registry: one module per family, found by ``model.name``.

A family is everything the toolkit knows about one kind of model: how to build it from its
``model`` config node, its trainer (fit, predict, save), the file its training produces
(``trainable_file``), what it takes as input (``input_spec``), how it is loaded end to end,
how a ``train.init_from`` model is checked and continued, and how an ensemble feeds it. Code
outside this package asks the registry (``family(info.model_type)``, ``family(cfg.model.name)``)
instead of comparing names.

The registry's table is ``faceattr.config.MODEL_FAMILIES``: one row per family (name, schema,
module, accepted aliases), plain data at config's floor, so the config schema, the CLI and
``models.info`` read the names without importing any family; ``family(name)`` imports the
module on first use. Family modules import TensorFlow only inside their methods, so finding a
family (e.g. for its ``trainable_file`` while ``run`` serves the TensorFlow Lite file) stays cheap.

Layers: ``models.info`` (model folder files) < the families < ``models.io`` (load and save by
``model_type``); ``models.cnn``, ``models.facenet``, ``facenet_graph``, ``heads`` and ``layers``
are the building blocks the family modules use.

Add a family: a module defining a :class:`ModelFamily` subclass and ``FAMILY = <instance>``,
its row in ``faceattr.config.MODEL_FAMILIES`` beside its schema (or :func:`register_family` at
run time), and ``conf/model/<name>.yaml`` (see docs/model_families.md).
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from faceattr.config import MODEL_FAMILIES, FamilyEntry, family_entry, family_names
from faceattr.errors import ConfigError
from faceattr.models.info import load_keras_file

if TYPE_CHECKING:
    import keras
    import numpy as np
    import pandas as pd
    from omegaconf import DictConfig

    from faceattr.models.info import ModelInfo

__all__ = ["ImageModelTrainer", "InputSpec", "ModelFamily", "Trainer", "family", "family_names", "register_family"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """What a family's end-to-end model takes: float32 RGB faces of shape (N, size, size, 3)
    with values in [0, 255], resized with area interpolation (``models.preprocessing``).

    ``normalisation`` names what the model's own first layers do with them, so every caller
    feeds raw pixels and can't normalise differently from training.
    """

    size: int               # pixels per side
    normalisation: str      # e.g. "rescale to [-1, 1]" or "per-image prewhitening"
    value_range: tuple[float, float] = (0.0, 255.0)
    channels: str = "RGB"


class Trainer(Protocol):
    """A family's trainer: trains its model (built or loaded), scores splits and saves it. What it
    holds of the model is its own (:class:`ImageModelTrainer`: the whole model, as ``model``)."""

    def fit(self, frame: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
        """Train on ``frame``'s train rows, validate on its val rows; returns the epoch history."""
        ...

    def predict(self, frame: pd.DataFrame, tta_flip: bool) -> dict[str, np.ndarray]:
        """Predictions for ``frame``'s rows (``models.predictions.to_predictions``'s form)."""
        ...

    def save(self, model_dir: Path, trained_with: dict) -> None:
        """Write the trained model and its ``model_info.json`` into ``model_dir``."""
        ...

    def extra_summary(self) -> dict[str, Any]:
        """Keys this family adds to ``train_summary.json`` (e.g. feature extraction cost)."""
        ...


class ImageModelTrainer(Trainer, Protocol):
    """The trainer of a family whose model takes the face image (``shares_trunk`` False): it
    holds the whole Keras model it trains, ``model`` (what ``distill`` fits a student through).
    A family on a frozen trunk's cached outputs trains only its top, so its trainer has none."""

    model: keras.Model


class ModelFamily(ABC):
    """One kind of model. Subclasses set ``name`` and implement :meth:`build` and :meth:`trainer`;
    the defaults suit a model that takes the face image itself (the from-scratch CNN)."""

    #: ``model.name`` and ``model_info.json``'s ``model_type``: its row's name in
    #: ``faceattr.config.MODEL_FAMILIES``.
    name: ClassVar[str]
    #: The Keras file in a model folder that holds what training produced.
    trainable_file: ClassVar[str] = "model.keras"
    #: Whether its saved models take the output of a frozen trunk shared by every member of an
    #: ensemble (which then runs once per face) rather than the face image.
    shares_trunk: ClassVar[bool] = False

    @abstractmethod
    def build(self, model_cfg: DictConfig) -> keras.Model:
        """A fresh trainable Keras model for ``model_cfg`` (this family's ``model`` node)."""

    @abstractmethod
    def trainer(self, cfg: DictConfig, trained: keras.Model | None = None) -> Trainer:
        """The trainer for the composed ``cfg``, holding ``trained`` (what ``io.load_trainable``
        returns for a folder of this family) or a freshly built model."""

    def input_spec(self, input_size: int) -> InputSpec:
        """What the end-to-end model at ``input_size`` pixels takes."""
        return InputSpec(input_size, "inside the model (its first layers)")

    def load_trainable(self, model_dir: Path, info: ModelInfo) -> keras.Model:
        """The model folder's ``trainable_file`` (what :meth:`trainer` takes), safe mode."""
        return load_keras_file(Path(model_dir) / self.trainable_file)

    def end_to_end(self, trainable: keras.Model, info: ModelInfo, cache_dir: Path | None = None) -> keras.Model:
        """The saved trainable model made into one raw-image-to-labels model (``io.load_model``)."""
        return trainable

    def check_init_from(self, cfg: DictConfig, init_dir: Path, info: ModelInfo) -> None:
        """Refuse (``ConfigError``) a ``train.init_from`` model of this family whose weights can't
        start this run; the model type and input size were checked already. By default any can."""
        return None

    def trainer_from(self, cfg: DictConfig, init_dir: Path, info: ModelInfo) -> Trainer:
        """The trainer starting from the weights of the model folder ``init_dir`` (checked)."""
        trainer = self.trainer(cfg, self.load_trainable(init_dir, info))
        log.info("Starting from the weights of %s", init_dir)
        return trainer

    def feed_image(self, image: keras.KerasTensor, info: ModelInfo, index: int) -> keras.KerasTensor:
        """Ensemble: this member's input from the ensemble's face ``image`` (N, S, S, 3); by
        default the face shrunk to the member's size by box averaging, as in its training."""
        from faceattr.models.layers import AreaResize  # deferred: Keras (models.layers), not to find a family

        if info.input_size == image.shape[1]:
            return image
        return AreaResize(info.input_size, name=f"resize_{index}")(image)

    def check_ensemble(self, dirs: list[Path], infos: list[ModelInfo]) -> None:
        """Refuse (``ConfigError``) members that can't share this trunk family's input; called
        for a family with ``shares_trunk`` when one of its models is among the members."""
        raise NotImplementedError(f"{self.name} models take the face image; they need no shared trunk")

    def ensemble(self, dirs: list[Path], infos: list[ModelInfo], cache_dir: Path | None,
                 weights: dict[str, list[float]] | None = None) -> tuple[keras.Model, int]:
        """The members' mean (weighted by ``weights``: per task, one weight per member) fed from this family's shared
        trunk; returns the model and the index of the member whose input (and ``model_info``) the
        ensemble takes."""
        raise NotImplementedError(f"{self.name} models take the face image; they need no shared trunk")


def register_family(name: str, module: str, schema: type | None = None) -> None:
    """Make ``module`` (a module path defining ``FAMILY``) the family of ``model.name=name``: a row
    added to (or replacing one of) the table ``faceattr.config.MODEL_FAMILIES``."""
    MODEL_FAMILIES[name] = FamilyEntry(name, schema, module)
    _loaded.pop(name, None)


_loaded: dict[str, ModelFamily] = {}


def family(name: str) -> ModelFamily:
    """The family of ``model.name`` / ``model_type`` ``name``, or of one of its aliases (its
    module imported on first use).

    Raises:
        ConfigError: no family has that name.
    """
    entry = family_entry(name)
    if entry is None:
        raise ConfigError(f"model.name: unknown model {name!r} ({'|'.join(sorted(family_names()))})")
    if entry.name not in _loaded:
        found = importlib.import_module(entry.module).FAMILY
        if found.name != entry.name:
            raise ConfigError(f"model.name: {entry.module} defines the family {found.name!r}, not {entry.name!r}")
        _loaded[entry.name] = found
    return _loaded[entry.name]
