"""The TensorFlow Lite export ``run`` serves: a tiny real CNN exported with the real converter,
run by the real LiteRT interpreter, compared with the Keras model it came from."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import cli, run_command
from faceattr.config import group_node
from faceattr.errors import ConfigError, ModelError
from faceattr.hashing import file_sha256
from faceattr.inference.predictor import Predictor
from faceattr.inference.runtime import KerasRunner, LiteRunner, open_runner
from faceattr.models import io
from faceattr.models.cnn import build_cnn
from faceattr.models.export import TFLITE_FILE, export_tflite
from faceattr.models.info import ModelInfo, load_keras_file, write_info
from faceattr.models.weight_storage import INT8_WEIGHTS, SCALE_ATTR, rewrite_weights

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
SIZE = 32


def tiny_cnn(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    cfg = OmegaConf.merge(group_node("model", "cnn"),
                          {"input_size": SIZE, "filters": [16, 32], "heads": {"hidden_units": [64]}})
    return build_cnn(cfg)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """One tiny CNN saved twice, exported as float32 and as dynamic int8."""
    out = {}
    model = tiny_cnn(0)
    for quantization in ("float32", "dynamic"):
        folder = tmp_path_factory.mktemp(quantization)
        io.save_model(folder, ModelInfo(model_type="cnn", input_size=SIZE), model)
        export_tflite(folder, quantization=quantization)
        out[quantization] = folder
    return out


def faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.slow
def test_export_records_its_source_and_matches_keras(exported):
    folder = exported["float32"]
    info = ModelInfo.read(folder)
    assert info.export["quantization"] == "float32"
    assert info.export["source_sha256"] == file_sha256(folder / "model.keras")
    assert info.export["bytes"] == (folder / TFLITE_FILE).stat().st_size
    keras_out = KerasRunner(io.load_model(folder).model, SIZE)(faces(5))
    lite = LiteRunner(folder / TFLITE_FILE)
    for batch in (5, 1, 5):  # the interpreter is resized between batch sizes
        lite_out = lite(faces(5)[:batch])
        assert lite_out["age"].shape == (batch,) and lite_out["gender"].shape == (batch, 2)
        assert lite_out["race"].shape == (batch, 5)
        for key in ("age", "gender", "race"):
            np.testing.assert_allclose(lite_out[key], keras_out[key][:batch], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_saved_kernels_are_int8_and_load_as_float32(tmp_path):
    import zipfile

    import h5py
    import keras

    model = tiny_cnn(3)
    x = faces(4)
    want = model.predict(x, verbose=0)
    keras.saving.save_model(model, tmp_path / "full.keras")  # float32, as Keras saves (an older folder)
    half = keras.saving.load_model(tmp_path / "full.keras", compile=False)
    keras.saving.save_model(half, tmp_path / "half.keras")
    store_as_float16(tmp_path / "half.keras")  # float16, as model folders were saved before int8 kernels
    io.save_model(tmp_path / "int8", ModelInfo(model_type="cnn", input_size=SIZE), model)
    # In the file: kernels int8 with one scale per output channel, vectors float16; a quarter
    # of the float32 bytes, give or take the vectors and scales.
    stored = {}
    for name, path, weights in (("int8", tmp_path / "int8" / "model.keras", INT8_WEIGHTS),
                                ("full", tmp_path / "full.keras", "model.weights.h5")):
        with zipfile.ZipFile(path) as archive:
            archive.extract(weights, tmp_path / name)
        datasets = []
        with h5py.File(tmp_path / name / weights) as h5:
            h5.visititems(lambda _, item, found=datasets: found.append(
                (item.ndim, str(item.dtype), item.nbytes, item.shape, item.attrs.get(SCALE_ATTR)))
                if isinstance(item, h5py.Dataset) else None)
        stored[name] = datasets
    assert {(ndim >= 2, dtype) for ndim, dtype, *_ in stored["int8"]} == {(True, "int8"), (False, "float16")}
    assert all(scale.shape == shape[-1:] for ndim, _, _, shape, scale in stored["int8"] if ndim >= 2)
    assert {dtype for _, dtype, *_ in stored["full"]} == {"float32"}
    int8_bytes, full_bytes = (sum(n for _, _, n, *_ in stored[k]) for k in ("int8", "full"))
    assert full_bytes / 4 <= int8_bytes < full_bytes / 3.5
    # Loaded: float32 weights and computation, outputs within int8 rounding of the original; the
    # float32 and float16 files of older model folders load unchanged.
    # Keras alone refuses the file (it would read the int8 values as weights); the toolkit loads it.
    with pytest.raises(ValueError, match="model.weights.h5"):
        keras.saving.load_model(tmp_path / "int8" / "model.keras", compile=False)
    loaded = io.load_model(tmp_path / "int8").model
    assert {w.dtype for w in loaded.weights} == {"float32"}
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}
    got = loaded.predict(x, verbose=0)
    np.testing.assert_allclose(got["race"], want["race"], atol=2e-2)
    np.testing.assert_allclose(got["age"], want["age"], rtol=0.02)
    assert not np.array_equal(got["age"], want["age"])  # rounded, not the same weights
    # The saved model is left holding the stored weights: what it predicts after saving (the
    # evaluation at the end of training) is what the saved file predicts.
    np.testing.assert_array_equal(model.predict(x, verbose=0)["age"], got["age"])
    old = load_keras_file(tmp_path / "full.keras")
    np.testing.assert_array_equal(old.predict(x, verbose=0)["age"], want["age"])
    older = load_keras_file(tmp_path / "half.keras")
    np.testing.assert_allclose(older.predict(x, verbose=0)["age"], want["age"], rtol=2e-3)


def store_as_float16(keras_file: Path) -> None:
    """Rewrite a ``.keras`` file's float32 weights as float16, as model folders were once saved."""
    def half(values, attrs):
        return (values.astype("float16") if values.dtype == np.float32 else values), attrs

    copy = keras_file.with_name("copy.keras")
    rewrite_weights(keras_file, copy, half)
    copy.replace(keras_file)


@pytest.mark.slow
def test_dynamic_quantization_is_smaller_and_close(exported):
    small, exact = exported["dynamic"] / TFLITE_FILE, exported["float32"] / TFLITE_FILE
    assert small.stat().st_size < 0.6 * exact.stat().st_size  # int8 weights (tensors over 1,024 values)
    a, b = LiteRunner(small)(faces(8)), LiteRunner(exact)(faces(8))
    np.testing.assert_allclose(a["gender"].sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(a["race"] - b["race"]).max() < 0.05 and np.isfinite(a["age"]).all()


@pytest.mark.slow
def test_auto_serves_a_current_export_and_falls_back_when_stale(exported, tmp_path, caplog):
    folder = tmp_path / "m"
    shutil.copytree(exported["float32"], folder)
    runner, _ = open_runner(folder, "auto")
    assert runner.backend == "tflite"
    # Retrain (new weights into model.keras): the export no longer describes the model.
    io.save_model(folder, ModelInfo.read(folder), tiny_cnn(1))
    info = ModelInfo.read(folder)
    assert info.export is not None  # kept from the earlier export, now stale
    with caplog.at_level(logging.INFO):
        runner, _ = open_runner(folder, "auto")
    assert runner.backend == "keras" and "older than model.keras" in caplog.text
    with pytest.raises(ModelError, match="older than model.keras"):
        open_runner(folder, "tflite")


@pytest.mark.slow
def test_backend_errors_are_clear(exported, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(exported["float32"], folder)
    with pytest.raises(ConfigError, match="run.backend"):
        open_runner(folder, "onnx")
    (folder / TFLITE_FILE).write_bytes(b"not a flatbuffer")
    info = ModelInfo.read(folder)
    info.export["source_sha256"] = file_sha256(folder / "model.keras")
    write_info(folder, info)
    with pytest.raises(ModelError, match="cannot load the TensorFlow Lite model"):
        open_runner(folder, "tflite")
    (folder / TFLITE_FILE).unlink()
    with pytest.raises(ModelError, match="model.tflite is missing"):
        open_runner(folder, "tflite")


@pytest.mark.slow
def test_predictor_flip_tta_through_tflite(exported):
    pred = Predictor.load(exported["float32"], backend="tflite", tta_flip=False)
    assert pred.backend == "tflite"
    x = faces(1)
    a = pred.predict_arrays(np.concatenate([x, x[:, :, ::-1]]))["age"]
    pred.tta_flip = True
    assert pred.predict_arrays(x)["age"][0] == pytest.approx(a.mean(), abs=1e-3)


@pytest.mark.slow
def test_run_with_the_export_never_imports_tensorflow(exported, tmp_path):
    """What makes `run` start fast: the CLI path through LiteRT does not import TensorFlow."""
    out = tmp_path / "preds.csv"
    res = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "src" / "main.py"), "run", "--img",
                          str(ASTRONAUT), "--model_path", str(exported["dynamic"]), "--output", str(out),
                          "--no-display", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "ai_edge_litert" in imported or any(m.startswith("ai_edge_litert") for m in imported)
    assert not [m for m in imported if m == "tensorflow" or m == "keras"]
    assert out.read_text().count("\n") == 2  # header + the astronaut


@pytest.mark.slow
def test_export_command_refuses_an_unknown_quantization(exported, tmp_path, capsys):
    assert cli("export", exported["float32"], "export.quantization=int4", f"hydra.run.dir={tmp_path / 'x'}") == 2
    err = capsys.readouterr().err
    assert "export.quantization" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert json.loads((exported["float32"] / "model_info.json").read_text())["export"]["quantization"] == "float32"
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_export_command_writes_the_file_run_serves(cnn_run, tmp_path):
    """``export MODEL_DIR`` on a trained model: a copy of the session's CNN, re-exported with
    int8 weights, serves nearly what the float32 export it had does."""
    folder = tmp_path / "model"
    shutil.copytree(cnn_run / "model", folder)
    assert ModelInfo.read(folder).export["quantization"] == "float32"
    result = run_command("export", f"model_path={folder}", "export.quantization=dynamic",
                         f"paths.cache={tmp_path / 'cache'}", run_dir=tmp_path / "run")
    assert result == {"exported": str(folder / TFLITE_FILE), "quantization": "dynamic"}
    info = ModelInfo.read(folder)
    assert info.export["quantization"] == "dynamic" and info.export["bytes"] == (folder / TFLITE_FILE).stat().st_size
    assert info.export["source_sha256"] == file_sha256(folder / "model.keras")
    small = LiteRunner(folder / TFLITE_FILE)(faces(6))
    exact = LiteRunner(cnn_run / "model" / TFLITE_FILE)(faces(6))
    assert np.abs(small["race"] - exact["race"]).max() < 0.05 and np.isfinite(small["age"]).all()
