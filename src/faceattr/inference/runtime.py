"""What runs the network for ``Predictor``: the Keras model, or its TensorFlow Lite export.

A runner is a callable: (N, S, S, 3) float32 RGB in [0, 255] -> ``{"age": (N,) years,
"gender": (N, 2), "race": (N, 5)}`` as NumPy arrays. ``open_runner`` picks one for a model
folder (``run.backend``):

- ``tflite``: ``model.tflite`` through the LiteRT interpreter (``ai_edge_litert``). It never
  imports TensorFlow, so ``run`` starts faster, and XNNPACK runs the models at batch 1 faster
  than Keras (measured figures: ``benchmarks/README.md``, ``run_img_cold`` and ``latency_b1``
  beside ``latency_b1_keras``). Refused when the export is missing or stale (its recorded
  ``source_sha256`` differs from the Keras file's).
- ``keras``: the Keras model (``models.io.load_model``), safe mode.
- ``auto``: ``tflite`` when the folder has a current export and LiteRT is installed, else
  ``keras``, and the log says why.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from faceattr.errors import ConfigError, ModelError
from faceattr.hashing import file_sha256
from faceattr.models.info import ModelInfo
from faceattr.models.io import load_model, trainable_file
from faceattr.resources import program_name
from faceattr.verbosity import native_startup_lines_dropped

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tflite", "keras")


class Runner(Protocol):
    """(N, S, S, 3) float32 RGB [0, 255] -> age (N,) years, gender (N, 2), race (N, 5)."""

    backend: str

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


class KerasRunner:
    """A Keras end-to-end model behind a ``tf.function`` with a fixed signature (any batch size).

    Traced once, then it skips Keras' per-call overhead. Batch 1 on 2 CPU cores: 32 px test CNN
    1.8 ms vs 2.3 ms (predict_on_batch) vs ~30 ms (eager call). XLA (jit_compile) was 5-30 %
    faster but compiles again for every new batch size.
    """

    backend = "keras"

    def __init__(self, model: Any, input_size: int) -> None:
        import tensorflow as tf  # deferred: TensorFlow takes seconds to import; only for the Keras backend

        self.model = model
        self._tf = tf
        s = int(input_size)
        self._forward = tf.function(lambda x: model(x, training=False),
                                    input_signature=[tf.TensorSpec((None, s, s, 3), tf.float32)],
                                    reduce_retracing=True)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v) for k, v in self._forward(self._tf.constant(batch, dtype=self._tf.float32)).items()}
        out["age"] = out["age"].reshape(-1)
        return out


class LiteRunner:
    """A ``.tflite`` end-to-end model through LiteRT's interpreter (XNNPACK on CPU).

    The interpreter is resized when the batch size changes (video: 1-3 faces; ``evaluate``: 32),
    which re-plans its buffers once per new size. ``threads``: interpreter threads (default:
    all cores). Not thread-safe by itself; ``Predictor`` serialises calls.
    """

    backend = "tflite"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter  # deferred: LiteRT's native runtime
        except ImportError:
            raise ModelError(f"{path}: run.backend=tflite needs the ai-edge-litert package "
                             "(pip install -r requirements.txt)") from None
        self.path = Path(path)
        try:
            self._interp = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: cannot load the TensorFlow Lite model ({exc})") from None
        self._input = self._interp.get_input_details()[0]["index"]
        self._batch = -1
        self._outputs: dict[str, int] = {}

    def _resize(self, shape: tuple[int, ...]) -> None:
        self._interp.resize_tensor_input(self._input, list(shape), strict=False)
        with native_startup_lines_dropped("litert"):  # its XNNPACK line, once per process
            self._interp.allocate_tensors()
        # The converter names outputs after their graph op; the last axis tells them apart:
        # age (N, 1), gender (N, 2), race (N, 5). Checked here so a foreign file fails clearly.
        by_width = {int(d["shape"][-1]): d["index"] for d in self._interp.get_output_details()}
        if sorted(by_width) != [1, 2, 5]:
            raise ModelError(f"{self.path}: expected outputs of width 1, 2 and 5 (age, gender, race), "
                             f"got {sorted(by_width)}")
        self._outputs = {"age": by_width[1], "gender": by_width[2], "race": by_width[5]}
        self._batch = shape[0]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape[0] != self._batch:
            self._resize(batch.shape)
        self._interp.set_tensor(self._input, batch)
        self._interp.invoke()
        out = {k: self._interp.get_tensor(i).copy() for k, i in self._outputs.items()}
        out["age"] = out["age"].reshape(-1)
        return out


def export_problem(model_dir: Path, info: ModelInfo) -> str | None:
    """Why the folder's TensorFlow Lite export can't be used, or None when it is current."""
    export = info.export or {}
    if not export.get("tflite"):
        return f"it has no TensorFlow Lite export ({program_name()} export MODEL_DIR)"
    path = Path(model_dir) / export["tflite"]
    if not path.is_file():
        return f"{export['tflite']} is missing"
    source = Path(model_dir) / trainable_file(info.model_type)
    if source.is_file() and file_sha256(source) != export.get("source_sha256"):
        return f"{export['tflite']} is older than {source.name} (re-export: {program_name()} export {model_dir})"
    return None


def open_runner(model_dir: Path, backend: str = "auto", cache_dir: Path | None = None,
                threads: int | None = None) -> tuple[Runner, ModelInfo]:
    """The runner ``backend`` selects for a model folder, and the folder's ``ModelInfo``."""
    if backend not in BACKENDS:
        raise ConfigError(f"run.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    model_dir = Path(model_dir)
    info = ModelInfo.read(model_dir)
    if backend in ("auto", "tflite"):
        problem = export_problem(model_dir, info)
        if problem is None:
            try:
                runner = LiteRunner(model_dir / info.export["tflite"], threads)
                log.info("Serving %s (TensorFlow Lite, %s weights)", runner.path, info.export.get("quantization"))
                return runner, info
            except ModelError as exc:
                if backend == "tflite":
                    raise
                problem = str(exc)
        if backend == "tflite":
            raise ModelError(f"{model_dir}: {problem}")
        log.info("Using the Keras model of %s: %s", model_dir, problem)

    loaded = load_model(model_dir, cache_dir)
    return KerasRunner(loaded.model, info.input_size), info
