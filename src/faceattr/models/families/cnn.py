"""``model=cnn``: the from-scratch CNN (``models.cnn``), trained on images end to end.

Input: float32 RGB in [0, 255], (N, S, S, 3), S = ``model.input_size``; the model's first
layer rescales to [-1, 1]. Training reads the images through the tf.data pipeline
(``data.pipeline``: area resize, augmentation of the training split); the whole network is
saved as ``model.keras``. In an ensemble it takes the face, shrunk to its size.

:class:`ImageTrainer` suits any family whose model takes the face image itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from faceattr.data.targets import uses_weights
from faceattr.models.families import InputSpec, ModelFamily
from faceattr.models.info import ModelInfo, save_keras
from faceattr.models.predictions import to_predictions

if TYPE_CHECKING:
    import keras
    import pandas as pd
    from omegaconf import DictConfig

    from faceattr.models.predictions import Predictions


class ImageTrainer:
    """Images through the tf.data pipeline into a model that takes the face image
    ((N, S, S, 3) float32 RGB in [0, 255]); saved whole as the family's ``trainable_file``."""

    def __init__(self, cfg: DictConfig, family: ModelFamily, model: keras.Model | None = None):
        self.cfg = cfg
        self.family = family
        self.size = int(cfg.model.input_size)
        self.model = model if model is not None else family.build(cfg.model)

    def _dataset(self, frame: pd.DataFrame, training: bool):
        from faceattr.data.pipeline import make_dataset  # deferred: TensorFlow (data.pipeline), not to find a family

        return make_dataset(frame, self.size, int(self.cfg.train.batch_size), training=training,
                            augment_cfg=self.cfg.data.augment, shuffle_buffer=int(self.cfg.data.shuffle_buffer),
                            seed=int(self.cfg.seed),
                            with_weights=training and uses_weights(self.cfg, frame))

    def fit(self, frame: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
        from faceattr.models.engine.loop import fit_model  # deferred: Keras (the engine), not to find a family

        train, val = frame[frame.split == "train"], frame[frame.split == "val"]
        return fit_model(self.model, self._dataset(train, True), self._dataset(val, False), self.cfg, run_dir,
                         int(train["copies"].sum()), float(self.cfg.train.learning_rate))

    def predict(self, frame: pd.DataFrame, tta_flip: bool) -> Predictions:
        import tensorflow as tf  # deferred: TensorFlow, not to find a family

        images = self._dataset(frame, False).map(lambda x, *_: x)
        outputs = [self.model.predict(images, verbose=0)]
        if tta_flip:
            outputs.append(self.model.predict(images.map(lambda x: tf.reverse(x, axis=[2])), verbose=0))
        return to_predictions(outputs)

    def save(self, model_dir: Path, trained_with: dict) -> None:
        save_keras(model_dir, ModelInfo(self.family.name, self.size, trained_with=trained_with), self.model,
                   self.family.trainable_file)

    def extra_summary(self) -> dict[str, Any]:
        return {}


class CNNFamily(ModelFamily):
    """The from-scratch CNN (``conf/model/cnn.yaml``, ``config.CNNConfig``; once named ``normal``,
    still accepted as its alias)."""

    name = "cnn"
    trainable_file = "model.keras"

    def build(self, model_cfg: DictConfig) -> keras.Model:
        from faceattr.models.cnn import build_cnn  # deferred: Keras (models.cnn), not to find a family

        return build_cnn(model_cfg)

    def trainer(self, cfg: DictConfig, trained: keras.Model | None = None) -> ImageTrainer:
        return ImageTrainer(cfg, self, trained)

    def input_spec(self, input_size: int) -> InputSpec:
        return InputSpec(input_size, "rescale to [-1, 1] (its first layer)")


FAMILY = CNNFamily()
