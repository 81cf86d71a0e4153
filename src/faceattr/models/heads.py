"""Task heads shared by both model families, and the losses and metrics that go with them.

Outputs (a dict, the same keys for every model):
- ``age``: (N, 1) float32, years.
- ``gender``: (N, 2) softmax probabilities in the order of ``labels.GENDERS``.
- ``race``: (N, 5) softmax probabilities in the order of ``labels.RACES``.
"""

from __future__ import annotations

import keras
from keras import layers
from omegaconf import DictConfig

from faceattr.errors import ConfigError
from faceattr.labels import GENDERS, RACES
from faceattr.models.losses import IntervalAgeLoss, IntervalMAE, MaskedAccuracy, MaskedSparseCategoricalCrossentropy

#: The expectation head spreads its probability over ages 0..AGE_CLASSES-1 years.
AGE_CLASSES = 101
#: Mean UTKFace age (years); the regression bias starts here so early epochs aren't wasted.
AGE_PRIOR_MEAN = 33.0


@keras.saving.register_keras_serializable(package="faceattr")
class AgeExpectation(layers.Layer):
    """Expected age in years from probabilities over ages 0..K-1: (N, K) -> (N, 1)."""

    def call(self, probs):
        ages = keras.ops.arange(keras.ops.shape(probs)[-1], dtype=probs.dtype)
        return keras.ops.sum(probs * ages, axis=-1, keepdims=True)


def _mlp(x, units: list[int], dropout: float, name: str):
    for i, n in enumerate(units):
        x = layers.Dense(n, activation="relu", name=f"{name}_dense{i}")(x)
        x = layers.Dropout(dropout, name=f"{name}_dropout{i}")(x)
    return x


def build_heads(features, heads_cfg: DictConfig) -> dict:
    """Attach one small MLP per task to ``features`` (N, D); returns the named outputs.

    Each task gets its own hidden layers, so a task with a large loss can't crowd out the
    others' representations.
    """
    units = list(heads_cfg.hidden_units)
    age_x = _mlp(features, units, heads_cfg.dropout, "age")
    if heads_cfg.age_mode == "expectation":
        probs = layers.Dense(AGE_CLASSES, activation="softmax", name="age_probs")(age_x)
        age = AgeExpectation(name="age")(probs)
    elif heads_cfg.age_mode == "regression":
        age = layers.Dense(1, bias_initializer=keras.initializers.Constant(AGE_PRIOR_MEAN), name="age")(age_x)
    else:
        raise ConfigError(f"model.heads.age_mode: unknown mode {heads_cfg.age_mode!r} (regression|expectation)")
    gender = layers.Dense(len(GENDERS), activation="softmax", name="gender")(
        _mlp(features, units, heads_cfg.dropout, "gender")
    )
    race = layers.Dense(len(RACES), activation="softmax", name="race")(
        _mlp(features, units, heads_cfg.dropout, "race")
    )
    return {"age": age, "gender": gender, "race": race}


def age_loss(heads_cfg: DictConfig) -> keras.losses.Loss:
    """The age loss named by ``heads_cfg.age_loss`` (on years), on the distance outside each face's
    age interval, so exact ages and age groups train alike (``models.losses``)."""
    name = heads_cfg.age_loss
    if name not in ("mae", "huber", "mse"):
        raise ConfigError(f"model.heads.age_loss: unknown loss {name!r} (mae|huber|mse)")
    return IntervalAgeLoss(name, float(heads_cfg.huber_delta))


def compile_args(heads_cfg: DictConfig) -> dict:
    """``loss``, ``loss_weights`` and ``metrics`` for ``model.compile``, keyed by output name.

    Every loss and metric takes partial labels (``models.losses``): an age interval or none, a
    class index or -1."""
    return {
        "loss": {
            "age": age_loss(heads_cfg),
            "gender": MaskedSparseCategoricalCrossentropy(),
            "race": MaskedSparseCategoricalCrossentropy(),
        },
        "loss_weights": {k: float(v) for k, v in heads_cfg.loss_weights.items()},
        "metrics": {
            "age": [IntervalMAE(name="mae")],
            "gender": [MaskedAccuracy(name="accuracy")],
            "race": [MaskedAccuracy(name="accuracy")],
        },
    }
