"""Export a model folder to TensorFlow Lite, the format ``run`` serves by default.

Why: ``import tensorflow`` + ``import keras`` dominate a cold ``run``, while the LiteRT
interpreter (``ai_edge_litert``) imports quickly and runs the models at batch 1 faster than the
Keras graph (XNNPACK kernels); ``benchmarks/README.md`` has the measured figures
(``run_img_cold``, ``latency_b1`` beside ``latency_b1_keras``). Training and evaluation stay in Keras;
the export is the same end-to-end network (``models.io.load_model``): float32 RGB in [0, 255],
(N, S, S, 3) in, ``age`` (N, 1) years, ``gender`` (N, 2), ``race`` (N, 5) out.

Quantization:
- ``dynamic``: weights stored as int8, activations stay float (no calibration data needed).
  About a quarter of the float32 size, which also keeps the shipped FaceNet file under the 50 MB
  at which code hosts warn about a file; its test-split metrics are reported next to Keras'.
  The Keras files store their kernels as int8 the same way (``models.weight_storage``).
- ``float32``: the Keras numbers exactly (to ~1e-6).

The export records the sha256 of the Keras file it came from in ``model_info.json``
(``export.source_sha256``); ``inference.runtime`` refuses a stale export.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

from faceattr import writes
from faceattr.errors import ConfigError
from faceattr.hashing import file_sha256
from faceattr.models.info import ModelInfo, write_info
from faceattr.models.io import load_model, trainable_file

log = logging.getLogger(__name__)

TFLITE_FILE = "model.tflite"
QUANTIZATIONS = ("dynamic", "float32")


def export_tflite(model_dir: Path, cache_dir: Path | None = None, quantization: str = "dynamic") -> Path:
    """Write ``model_dir/model.tflite`` from the folder's Keras model; returns its path.

    Replaces an earlier export of the same folder (it is derived data, recorded in
    ``model_info.json``); the Keras files are never touched.
    """
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"export.quantization: {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    import tensorflow as tf  # deferred: TensorFlow takes seconds to import

    model_dir = Path(model_dir)
    loaded = load_model(model_dir, cache_dir)
    start = time.perf_counter()
    converter = _converter(loaded.model)
    if quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with contextlib.redirect_stdout(io.StringIO()) as chatter:  # the converter can print to stdout
        blob = converter.convert()
    log.debug("converter output:\n%s", chatter.getvalue())
    target = model_dir / TFLITE_FILE
    with writes.replacing(target) as partial:  # a reader never sees half a file; a full disk leaves none
        partial.write_bytes(blob)
    info: ModelInfo = loaded.info
    info.export = {
        "tflite": TFLITE_FILE,
        "quantization": quantization,
        "source": trainable_file(info.model_type),
        "source_sha256": file_sha256(model_dir / trainable_file(info.model_type)),
        "tensorflow": tf.__version__,
        "bytes": len(blob),
    }
    write_info(model_dir, info)
    log.info("Exported %s (%s, %.1f MB) in %.1f s", target, quantization, len(blob) / 1e6,
             time.perf_counter() - start)
    return target


def _converter(model: Any) -> Any:
    """A TensorFlow Lite converter of ``model``'s forward pass, traced once as a concrete function.

    Keras' own route (``from_keras_model``) first writes the model out as a SavedModel: for the
    shipped FaceNet model that took 51 s against 30 s this way, for a file whose outputs are
    identical (measured on the same faces). The variables ride along in a ``tf.Module``, so the
    converter freezes their values into the file.
    """
    import tensorflow as tf  # deferred: TensorFlow takes seconds to import

    holder = tf.Module()
    holder.weights = [getattr(v, "value", v) for v in model.variables]  # Keras 3 wraps tf.Variables
    holder.forward = tf.function(lambda x: model(x, training=False),
                                 input_signature=[tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)])
    return tf.lite.TFLiteConverter.from_concrete_functions([holder.forward.get_concrete_function()], holder)

