"""Keras layers that saved models may contain, registered for safe-mode loading.

``models.io`` imports this module before it loads any ``.keras`` file.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops


def area_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) float32 matrix of 1-D box (area) averaging, as OpenCV's ``INTER_AREA``.

    Output pixel i averages the input span [i * s, (i + 1) * s), s = size_in / size_out, each
    input pixel weighted by how much of it the span covers; each row sums to 1.
    """
    if not 0 < size_out <= size_in:
        raise ValueError(f"area_weights downscales only: {size_in} -> {size_out}")
    scale = size_in / size_out
    starts = np.arange(size_out)[:, None] * scale
    pixels = np.arange(size_in)[None, :]
    covered = np.clip(np.minimum(pixels + 1, starts + scale) - np.maximum(pixels, starts), 0.0, None)
    return (covered / scale).astype(np.float32)


@keras.saving.register_keras_serializable(package="faceattr")
class AreaResize(keras.layers.Layer):
    """Downscale square images with box averaging: (N, S, S, C) -> (N, size, size, C), same units.

    Why not ``Resizing(interpolation="area")``: TensorFlow Lite has no area-resize op. Area
    downscaling is separable and linear, so it is two small matrix products, which every
    backend and the TFLite converter handle; it matches ``cv2.resize(..., INTER_AREA)``, the
    filter the models' training images went through (``models.preprocessing``).
    """

    def __init__(self, size: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.size = int(size)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        height, width = input_shape[1], input_shape[2]
        if height != width or height is None:
            raise ValueError(f"AreaResize takes square images of a fixed size, not {input_shape}")
        self._weights_matrix = ops.convert_to_tensor(area_weights(int(height), self.size))
        super().build(input_shape)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        if x.shape[1] == self.size:
            return x
        a = ops.cast(self._weights_matrix, x.dtype)
        return ops.einsum("oh,nhwc,pw->nopc", a, x, a)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package="faceattr")
class WeightedMean(keras.layers.Layer):
    """The weighted mean of same-shaped tensors, ``sum_i w_i x_i`` with ``member_weights`` (one per
    input, summing to 1): an ensemble whose members count unequally (``ensemble.weights``)."""

    def __init__(self, member_weights: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.member_weights = [float(w) for w in member_weights]

    def call(self, inputs):
        out = inputs[0] * self.member_weights[0]
        for w, x in zip(self.member_weights[1:], inputs[1:], strict=True):
            out = out + x * w
        return out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "member_weights": self.member_weights}
