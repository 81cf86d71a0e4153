"""Bad input around `run`, model folders, `promote` and `ensemble`: one clear line, never a
traceback, a hang or an aborted process; nothing written is lost or nested."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import one_error_line, save_tiny_cnn
from faceattr.errors import ConfigError, ModelError
from faceattr.inference.images import read_image
from faceattr.models import io
from faceattr.models.info import FORMAT_VERSION, MODEL_INFO, ModelInfo, load_keras_file, write_info
from faceattr.training.promote import promote

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
SHIPPED_NORMAL = ROOT / "saved_model" / "cnn"
TINY_SIZE = 32


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
def main_py(*args: str | Path, cwd: Path, env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    """The CLI as a user runs it."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


def error_lines(res: subprocess.CompletedProcess) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("error:")]


def assert_one_error(res: subprocess.CompletedProcess, *fragments: str) -> str:
    """rc 2, no traceback, and exactly one ``error:`` line holding every fragment."""
    line = one_error_line(res)
    for fragment in fragments:
        assert fragment in line, line
    return line


def small_photo(path: Path) -> Path:
    """A small real photo (the astronaut, shrunk) written with cv2."""
    image = cv2.imread(str(ASTRONAUT))
    assert cv2.imwrite(str(path), cv2.resize(image, (160, 160), interpolation=cv2.INTER_AREA))
    return path


def write_clip(path: Path, frames: int = 5) -> Path:
    face = cv2.resize(cv2.imread(str(ASTRONAUT)), (64, 64), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((64, 96, 3), 90, np.uint8)
        frame[:, 4 * i:4 * i + 64] = face
        writer.write(frame)
    writer.release()
    return path


def heads(x):
    import keras

    x = keras.layers.GlobalAveragePooling2D()(x)
    return {"age": keras.layers.Dense(1, name="age")(x),
            "gender": keras.layers.Dense(2, activation="softmax", name="gender")(x),
            "race": keras.layers.Dense(5, activation="softmax", name="race")(x)}


def scale_pixels(t):
    return t / 255.0


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real (untrained) CNN model folder with a ``split.csv``, as training leaves it."""
    model_dir = save_tiny_cnn(tmp_path_factory.mktemp("tiny") / "model", TINY_SIZE)
    (model_dir / "split.csv").write_text("image,split\na.jpg,train\nb.jpg,val\nc.jpg,test\n")
    return model_dir


# ---------------------------------------------------------------------------------------
# 4. A $DISPLAY that can't be opened: headless, one log line, never an abort
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_unreachable_display_means_headless_not_an_abort(tmp_path, request):
    number = next(n for n in range(87, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    # The shipped model's TensorFlow Lite file spares the child a TensorFlow import.
    model = (["--model_type", "cnn"] if (SHIPPED_NORMAL / "model.tflite").is_file()
             else ["--model_path", request.getfixturevalue("tiny_model_dir")])
    env = {"DISPLAY": f":{number}", "WAYLAND_DISPLAY": ""}
    res = main_py("run", "--img", small_photo(tmp_path / "a.jpg"), *model, "detector=none", "run.display=true",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr and not error_lines(res)
    rows = (tmp_path / "run" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 2 and str(tmp_path / "a.jpg") in rows[1]
    said = [line for line in (res.stdout + res.stderr).splitlines() if "not displaying" in line]
    assert len(said) == 1 and f"DISPLAY=:{number}" in said[0]


# ---------------------------------------------------------------------------------------
# 5. --output and the annotated folder are checked before any work
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("case", ["proc", "under_a_file", "annotated_under_a_file", "video_under_a_file"])
def test_unwritable_outputs_are_one_line_before_any_work(tmp_path, tiny_model_dir, case):
    if case == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc")
    photo = small_photo(tmp_path / "a.jpg")
    blocker = tmp_path / "existing.jpg"
    blocker.write_bytes(b"a user's file")
    target = {"proc": Path("/proc/preds.csv"), "under_a_file": blocker / "preds.csv",
              "annotated_under_a_file": blocker / "annotated", "video_under_a_file": blocker / "out.mp4"}[case]
    source = (["--video", write_clip(tmp_path / "clip.mp4"), "--output", target] if case.startswith("video")
              else ["--img", photo, f"run.annotated_dir={target}"] if case.startswith("annotated")
              else ["--img", photo, "--output", target])
    res = main_py("run", *source, "--model_path", tiny_model_dir, "--no-display", "detector=none",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = assert_one_error(res, str(target), "cannot be written")
    assert ("is a file, not a folder" in line) == (case != "proc")
    assert "Loaded cnn model" not in res.stdout  # refused before the model was loaded
    assert blocker.read_bytes() == b"a user's file"


# ---------------------------------------------------------------------------------------
# 6. model_info.json is validated on load
# ---------------------------------------------------------------------------------------
BAD_INFOS = {
    "binary": (bytes(range(256)) * 2, "not a text file"),
    "a_string": (b'"hello"', "expected a JSON object"),
    "export_not_an_object": ({"export": "model.tflite"}, "export: expected an object or null"),
    "input_size_text": ({"input_size": "abc"}, "input_size: expected a positive whole number"),
    "unknown_type": ({"model_type": "resnet"}, "model_type: expected 'facenet' or 'cnn'"),
}


def bad_model_folder(folder: Path, tiny_model_dir: Path, content: bytes | dict) -> Path:
    folder.mkdir()
    (folder / "model.keras").write_bytes((tiny_model_dir / "model.keras").read_bytes())
    info = json.loads((tiny_model_dir / MODEL_INFO).read_text())
    data = json.dumps({**info, **content}).encode() if isinstance(content, dict) else content
    (folder / MODEL_INFO).write_bytes(data)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_INFOS)
def test_bad_model_info_is_one_line_naming_file_and_key(tmp_path, tiny_model_dir, case):
    content, expected = BAD_INFOS[case]
    folder = bad_model_folder(tmp_path / "model", tiny_model_dir, content)
    res = main_py("run", "--img", small_photo(tmp_path / "a.jpg"), "--model_path", folder, "--no-display",
                  "detector=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_error(res, str(folder / MODEL_INFO), expected)


def test_unknown_model_type_is_refused_even_with_an_export(tmp_path):
    """A TensorFlow Lite file used to be served whatever model_type said."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.tflite").write_bytes(b"stand-in")
    (folder / MODEL_INFO).write_text(json.dumps({"model_type": "resnet", "input_size": 64,
                                                    "export": {"tflite": "model.tflite"}}))
    with pytest.raises(ModelError, match=r"model_info\.json: model_type: expected 'facenet' or 'cnn', got \"resnet"):
        ModelInfo.read(folder)


def test_model_info_lists_every_problem_in_one_line(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / MODEL_INFO).write_text(json.dumps({"input_size": 0, "races": "white", "export": {"tflite": "../x"}}))
    with pytest.raises(ModelError) as err:
        ModelInfo.read(folder)
    message = str(err.value)
    assert "\n" not in message
    for part in ("model_type: missing", "input_size: expected a positive", "races: expected a list",
                 "export.tflite: expected a file name inside the model folder"):
        assert part in message


# ---------------------------------------------------------------------------------------
# 9. Odd files, Lambda layers, promote backups, duplicate members, PNG orientation
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind, expected", [("fifo", "is a named pipe, not a regular file"),
                                            ("loop", "symbolic link loop")])
def test_special_inputs_are_one_line(tmp_path, tiny_model_dir, kind, expected):
    path = tmp_path / f"{kind}.jpg"
    if kind == "fifo":
        os.mkfifo(path)  # reading it would wait forever for a writer
    else:
        os.symlink(tmp_path / "other.jpg", path)
        os.symlink(path, tmp_path / "other.jpg")
    res = main_py("run", "--img", path, "--model_path", tiny_model_dir, "--no-display", "detector=none",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=60)
    assert_one_error(res, str(path), expected)


def lambda_model_folder(folder: Path, variant: str) -> Path:
    import keras

    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3))
    fn = (lambda t: t / 255.0) if variant == "python_lambda" else scale_pixels
    keras.Model(inputs, heads(keras.layers.Lambda(fn, name="scale")(inputs))).save(folder / "model.keras")
    write_info(folder, ModelInfo(model_type="cnn", input_size=TINY_SIZE))
    return folder


@pytest.mark.parametrize("variant", ["python_lambda", "named_function"])
def test_lambda_layer_is_one_clear_line(tmp_path, tiny_model_dir, variant):
    folder = lambda_model_folder(tmp_path, variant)
    with pytest.raises(ModelError) as err:
        load_keras_file(folder / "model.keras")
    assert str(err.value) == (f"{folder / 'model.keras'}: the model file uses a Lambda layer (scale), which safe "
                              "loading refuses (it would run Python code stored in the file)")


@pytest.mark.slow
def test_lambda_layer_cli_is_one_error_line(tmp_path, tiny_model_dir):
    folder = lambda_model_folder(tmp_path, "named_function")
    res = main_py("run", "--img", small_photo(tmp_path / "a.jpg"), "--model_path", folder, "--no-display",
                  "detector=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_error(res, str(folder / "model.keras"), "uses a Lambda layer", "safe loading refuses")
    assert "config=" not in res.stderr and "Exception encountered" not in res.stderr  # Keras' many-line report


@pytest.mark.slow
def test_promotes_within_one_second_keep_every_backup_side_by_side(tmp_path, monkeypatch, tiny_model_dir):
    import faceattr.training.promote as promoting

    monkeypatch.setattr(promoting.time, "strftime", lambda fmt, *a: "20260101-120000")  # all in one second
    shipped = tmp_path / "saved_model"
    (shipped / "cnn").mkdir(parents=True)
    (shipped / "cnn" / "mine.txt").write_text("version 0")
    for k in range(1, 4):
        run = tmp_path / f"run{k}"
        run.mkdir()
        for f in tiny_model_dir.iterdir():  # a model that loads: promote checks it does
            (run / f.name).write_bytes(f.read_bytes())
        (run / "mine.txt").write_text(f"version {k}")
        promote(run, shipped)
    backups = sorted((shipped / ".previous").iterdir())
    assert [b.name for b in backups] == ["cnn-20260101-120000", "cnn-20260101-120000-1",
                                         "cnn-20260101-120000-2"]
    assert [(b / "mine.txt").read_text() for b in backups] == ["version 0", "version 1", "version 2"]
    assert not any(b.is_dir() for backup in backups for b in backup.iterdir())  # nothing nested
    assert (shipped / "cnn" / "mine.txt").read_text() == "version 3"


@pytest.mark.slow
def test_ensemble_refuses_the_same_member_twice(tmp_path, tiny_model_dir):
    res = main_py("ensemble", tiny_model_dir, tiny_model_dir, "export.tflite=false",
                  f"hydra.run.dir={tmp_path / 'ens'}", cwd=tmp_path)
    assert_one_error(res, str(tiny_model_dir), "given twice")
    assert not (tmp_path / "ens" / "model").exists()


def test_ensemble_duplicates_are_found_by_resolved_path(tmp_path, tiny_model_dir):
    from faceattr.models.ensemble import check_members

    link = tmp_path / "link"
    link.symlink_to(tiny_model_dir)
    run = tiny_model_dir.parent  # a training run folder, whose model/ is the member
    for pair in ([tiny_model_dir, link], [io.model_folder(run), tiny_model_dir / ".." / "model"]):
        with pytest.raises(ConfigError, match=re.escape(f"the same model folder as {tiny_model_dir}; give each")):
            check_members(pair)


def _exif_tiff(orientation: int) -> bytes:
    """A big-endian TIFF header and IFD0 holding only the Orientation tag (SHORT)."""
    entry = (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big") + \
        orientation.to_bytes(2, "big") + b"\0\0"
    return b"MM\0*" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big") + entry + (0).to_bytes(4, "big")


def png_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    """cv2's PNG with an ``eXIf`` chunk (as cameras and editors write it) after IHDR."""
    ok, buf = cv2.imencode(".png", image)
    assert ok
    data, body = buf.tobytes(), _exif_tiff(orientation)
    chunk = len(body).to_bytes(4, "big") + b"eXIf" + body + zlib.crc32(b"eXIf" + body).to_bytes(4, "big")
    return data[:33] + chunk + data[33:]  # signature (8) + IHDR (25)


def jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    body = b"Exif\0\0" + _exif_tiff(orientation)
    return buf.tobytes()[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + buf.tobytes()[2:]


@pytest.mark.parametrize("orientation", range(2, 9))
def test_png_exif_orientation_is_honoured_like_jpeg(tmp_path, orientation):
    photo = cv2.resize(cv2.imread(str(ASTRONAUT)), (72, 48), interpolation=cv2.INTER_AREA)  # not square
    png, jpg = tmp_path / "p.png", tmp_path / "p.jpg"
    png.write_bytes(png_with_orientation(photo, orientation))
    jpg.write_bytes(jpeg_with_orientation(photo, orientation))
    upright_png, upright_jpg = read_image(png), read_image(jpg)  # OpenCV turns the JPEG upright itself
    assert upright_png.shape == upright_jpg.shape == ((48, 72, 3) if orientation <= 4 else (72, 48, 3))
    assert np.abs(upright_png.astype(int) - upright_jpg.astype(int)).mean() < 4.0
    # ... and upright is not the stored pixels (mirrored or turned)
    assert upright_png.shape != photo.shape or np.abs(upright_png.astype(int) - photo.astype(int)).mean() > 10


# ---------------------------------------------------------------------------------------
# 10. A model folder written by a newer faceattr
# ---------------------------------------------------------------------------------------
def test_newer_format_version_is_refused_in_one_line_naming_the_file(tmp_path, tiny_model_dir):
    current = bad_model_folder(tmp_path / "current", tiny_model_dir, {"format_version": FORMAT_VERSION})
    assert ModelInfo.read(current).format_version == FORMAT_VERSION
    newer = bad_model_folder(tmp_path / "newer", tiny_model_dir, {"format_version": FORMAT_VERSION + 1})
    with pytest.raises(ModelError) as err:
        io.load_model(newer)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{newer / MODEL_INFO}: format_version {FORMAT_VERSION + 1} is newer")
