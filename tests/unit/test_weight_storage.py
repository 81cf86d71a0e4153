"""How saved weights are stored (``models.weight_storage``): int8 kernels with per-channel
scales, float16 vectors, worked on known values."""

from __future__ import annotations

import zipfile

import h5py
import numpy as np

from faceattr.models.weight_storage import (
    INT8_WEIGHTS,
    KERAS_WEIGHTS,
    SCALE_ATTR,
    as_stored,
    dequantize_kernel,
    dequantized_copy,
    has_int8_kernels,
    quantize_kernel,
    store_weights,
)


def test_kernel_channels_are_scaled_apart():
    # Two output channels (the last axis): peaks 2.54 and 0.127, so scales 0.02 and 0.001.
    kernel = np.array([[2.54, 0.127], [-1.0, -0.05], [0.011, 0.0]], dtype=np.float32)
    quantized, scale = quantize_kernel(kernel)
    np.testing.assert_allclose(scale, [0.02, 0.001], rtol=1e-6)
    assert quantized.dtype == np.int8
    np.testing.assert_array_equal(quantized, [[127, 127], [-50, -50], [1, 0]])  # 0.011 / 0.02 rounds to 1
    np.testing.assert_allclose(dequantize_kernel(quantized, scale), [[2.54, 0.127], [-1.0, -0.05], [0.02, 0.0]],
                               rtol=1e-6)


def test_all_zero_channel_and_rounding_error():
    kernel = np.zeros((3, 3, 4, 2), dtype=np.float32)
    kernel[..., 1] = np.random.default_rng(0).normal(size=(3, 3, 4))
    quantized, scale = quantize_kernel(kernel)
    assert scale[0] == 1.0 and not quantized[..., 0].any()  # no division by zero, still all zero
    error = np.abs(dequantize_kernel(quantized, scale) - kernel)
    assert error.max() <= scale[1] / 2 + 1e-7  # at most half a step
    assert np.abs(quantized).max() == 127


def test_as_stored_rounds_kernels_to_int8_and_vectors_to_float16():
    kernel = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(as_stored(kernel), dequantize_kernel(*quantize_kernel(kernel)))
    vector = np.array([0.1, 1 / 3], dtype=np.float32)
    np.testing.assert_array_equal(as_stored(vector), vector.astype(np.float16).astype(np.float32))
    counts = np.array([3, 4], dtype=np.int64)  # not float: left alone
    assert as_stored(counts).dtype == np.int64 and np.array_equal(as_stored(counts), counts)


def write_keras_like(path, arrays: dict[str, np.ndarray]) -> None:
    """A zip holding ``config.json`` and ``model.weights.h5`` with ``arrays``, as a .keras file does."""
    import io

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        group = h5.create_group("layers/dense/vars")
        for name, values in arrays.items():
            group.create_dataset(name, data=values)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", buffer.getvalue())


def read_weights(path, name: str) -> dict[str, tuple[np.ndarray, dict]]:
    import io

    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read(name)), "r") as h5:
        group = h5["layers/dense/vars"]
        return {key: (group[key][()], dict(group[key].attrs)) for key in group}


def test_store_then_dequantize_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    kernel, bias = rng.normal(size=(16, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    path = tmp_path / "model.keras"
    write_keras_like(path, {"0": kernel, "1": bias})
    assert not has_int8_kernels(path)
    store_weights(path)
    assert has_int8_kernels(path)
    with zipfile.ZipFile(path) as archive:  # under a name Keras refuses, not the one it would misread
        assert sorted(archive.namelist()) == ["config.json", INT8_WEIGHTS]
    stored = read_weights(path, INT8_WEIGHTS)
    assert stored["0"][0].dtype == np.int8 and stored["0"][1][SCALE_ATTR].shape == (8,)
    assert stored["1"][0].dtype == np.float16 and SCALE_ATTR not in stored["1"][1]
    with zipfile.ZipFile(path) as archive:
        assert archive.read("config.json") == b"{}"  # the rest of the archive is kept as it was
    (tmp_path / "out").mkdir()
    copy = dequantized_copy(path, tmp_path / "out")
    with zipfile.ZipFile(copy) as archive:
        assert sorted(archive.namelist()) == ["config.json", KERAS_WEIGHTS]
    loaded = read_weights(copy, KERAS_WEIGHTS)
    assert copy != path and has_int8_kernels(path) and not has_int8_kernels(copy)
    assert loaded["0"][0].dtype == np.float32 and SCALE_ATTR not in loaded["0"][1]
    np.testing.assert_array_equal(loaded["0"][0], as_stored(kernel))
    np.testing.assert_array_equal(loaded["1"][0], bias.astype(np.float16))
