"""How a saved Keras file stores its weights: kernels as int8, everything else as float16.

Why: ``run`` serves the TensorFlow Lite export (``models.export``), whose dynamic-range
quantization already runs every kernel as int8, so storing kernels so in the Keras file costs
nothing the served model does not already pay, at a quarter of float32's bytes (half of
float16's): a shipped model's file stays under the 50 MB at which code hosts warn, and each
model shipped adds half as much to the repository's history.

A kernel is a float32 array of two or more dimensions (Dense ``(in, out)``, Conv2D
``(kh, kw, in, out)``): stored as int8 with one float32 scale per output channel (its last
axis), symmetric, as TensorFlow Lite quantizes weights: ``value = int8 * scale`` with
``scale = max |w| over the channel / 127``. Vectors (biases, normalisation statistics, an age
head's bin centres) are stored as float16. The model's config is untouched; computation stays
float32.

Keras would read int8 kernels into float32 variables as if they were the weights (no error,
a broken model), so such a file keeps its weights as ``model.weights.int8.h5``, a name
``keras.models.load_model`` refuses ("Expected a model.weights.h5 ... file"): load it with
``models.info.load_keras_file`` (or ``models.io.load_model``), which goes through
``dequantized_copy``, a float32 copy under Keras' own name in a temporary folder. Files written
before (float16 or float32 weights in ``model.weights.h5``) load as they are.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np

#: The dtype of stored vectors; loading casts them to the model's float32.
VECTOR_DTYPE = "float16"
#: The weights file inside a ``.keras`` archive, as Keras names it and as the int8 storage does.
KERAS_WEIGHTS = "model.weights.h5"
INT8_WEIGHTS = "model.weights.int8.h5"
#: The dataset attribute holding an int8 kernel's per-channel scales (float32, one per output channel).
SCALE_ATTR = "faceattr_int8_scale"
INT8_MAX = 127

# An array in, what is stored for it out: the stored values and the attributes they need.
Transform = Callable[[np.ndarray, dict], tuple[np.ndarray, dict]]


def is_kernel(values: np.ndarray) -> bool:
    """Whether an array is stored as an int8 kernel: float32 with two or more dimensions."""
    return values.dtype == np.float32 and values.ndim >= 2


def quantize_kernel(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``kernel`` (float32, ``(..., C)``) as int8 of the same shape and ``C`` float32 scales."""
    peak = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)
    scale = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)  # an all-zero channel stays 0
    quantized = np.clip(np.rint(kernel / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return quantized, scale


def dequantize_kernel(quantized: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 kernel an int8 one and its per-channel scales stand for."""
    return quantized.astype(np.float32) * np.asarray(scale, dtype=np.float32)


def as_stored(values: np.ndarray) -> np.ndarray:
    """``values`` (a weight as the model holds it) rounded as the file stores it, in float32:
    what the model computes with once saved and loaded again."""
    values = np.asarray(values)
    stored, _ = _load(*_store(values, {}))  # the file's own round trip, one rule for both
    return stored.astype(np.float32) if values.dtype == np.float32 else stored


def _store(values: np.ndarray, attrs: dict) -> tuple[np.ndarray, dict]:
    if is_kernel(values):
        quantized, scale = quantize_kernel(values)
        return quantized, {**attrs, SCALE_ATTR: scale}
    if values.dtype == np.float32:
        return values.astype(VECTOR_DTYPE), attrs
    return values, attrs


def _load(values: np.ndarray, attrs: dict) -> tuple[np.ndarray, dict]:
    if SCALE_ATTR not in attrs:
        return values, attrs
    scale = attrs.pop(SCALE_ATTR)
    return dequantize_kernel(values, scale), attrs


def store_weights(keras_file: Path) -> None:
    """Rewrite the weights inside a ``.keras`` archive as stored here (int8 kernels, float16
    vectors, in ``INT8_WEIGHTS``), in place."""
    keras_file = Path(keras_file)
    tmp = keras_file.with_name(keras_file.name + ".tmp")
    rewrite_weights(keras_file, tmp, _store, INT8_WEIGHTS)
    tmp.replace(keras_file)


def has_int8_kernels(keras_file: Path) -> bool:
    """Whether a ``.keras`` archive holds int8 kernels (and so needs ``dequantized_copy`` to load)."""
    with zipfile.ZipFile(keras_file) as archive:
        return INT8_WEIGHTS in archive.namelist()


def dequantized_copy(keras_file: Path, folder: Path) -> Path:
    """A copy of ``keras_file`` in ``folder`` with its int8 kernels as float32 in Keras' own
    ``model.weights.h5``, for Keras to load."""
    target = Path(folder) / Path(keras_file).name
    rewrite_weights(Path(keras_file), target, _load, KERAS_WEIGHTS)
    return target


def rewrite_weights(source_file: Path, target_file: Path, transform: Transform,
                    weights_name: str = KERAS_WEIGHTS) -> None:
    """Copy a ``.keras`` archive, passing every array of its weights file through ``transform``
    and naming that file ``weights_name`` in the copy."""
    import h5py  # deferred: h5py, only to rewrite a saved file's weights

    def copy(source: h5py.Group, target: h5py.Group) -> None:
        target.attrs.update(source.attrs)
        for key, item in source.items():
            if isinstance(item, h5py.Group):
                copy(item, target.create_group(key))
                continue
            values, attrs = transform(item[()], dict(item.attrs))
            target.create_dataset(key, data=values).attrs.update(attrs)

    with zipfile.ZipFile(source_file) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(target_file, "w") as archive:
        for info, data in entries:
            if info.filename in (KERAS_WEIGHTS, INT8_WEIGHTS):
                out = BytesIO()
                with h5py.File(BytesIO(data), "r") as source, h5py.File(out, "w") as target:
                    copy(source, target)
                data = out.getvalue()
                renamed = zipfile.ZipInfo(weights_name, date_time=info.date_time)
                renamed.compress_type, renamed.external_attr = info.compress_type, info.external_attr
                info = renamed
            archive.writestr(info, data)
