"""The from-scratch multi-output CNN (``model=cnn``).

Input: float32 RGB in [0, 255], shape (N, S, S, 3) with S = ``model.input_size``; the
rescaling is the model's first layer, so training and serving can't normalise differently.
"""

from __future__ import annotations

import keras
from keras import layers
from omegaconf import DictConfig, ListConfig

from faceattr.errors import ConfigError
from faceattr.models.heads import build_heads


def conv_stage(x, filters: int, convs: int, residual: bool, name: str):
    """``convs`` 3x3 conv + batch norm + ReLU, an optional projected shortcut, then 2x2 max pool."""
    shortcut = x
    for i in range(convs):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        if i < convs - 1 or not residual:
            x = layers.ReLU(name=f"{name}_relu{i}")(x)
    if residual:
        # A 1x1 projection matches the channel count so the shortcut can be added.
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
        x = layers.Add(name=f"{name}_add")([x, shortcut])
        x = layers.ReLU(name=f"{name}_out")(x)
    return layers.MaxPooling2D(2, name=f"{name}_pool")(x)


def stage_convs(model_cfg: DictConfig) -> list[int]:
    """Convolutions per stage: ``convs_per_stage`` is one count for every stage or a list, one per stage."""
    convs = model_cfg.convs_per_stage
    stages = len(model_cfg.filters)
    counts = [int(c) for c in convs] if isinstance(convs, (list, ListConfig)) else [int(convs)] * stages
    if len(counts) != stages or min(counts) < 1:
        raise ConfigError(f"model.convs_per_stage: {list(counts)} does not give a count >= 1 for each of the "
                          f"{stages} stages in model.filters")
    return counts


def build_cnn(model_cfg: DictConfig) -> keras.Model:
    """Build the CNN described by ``conf/model/cnn.yaml``; outputs as in ``heads``."""
    size = int(model_cfg.input_size)
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    for i, (filters, convs) in enumerate(zip(model_cfg.filters, stage_convs(model_cfg), strict=True)):
        x = conv_stage(x, int(filters), convs, bool(model_cfg.residual), f"stage{i}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(float(model_cfg.dropout), name="features_dropout")(x)
    return keras.Model(inputs, build_heads(x, model_cfg.heads), name="normal_cnn")
