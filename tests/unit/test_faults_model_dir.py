"""A damaged ``split.csv`` in a model folder: one line naming the file from ``evaluate``,
``calibrate`` and ``ensemble`` (never a pandas traceback), and a file cut short is caught, not
scored as a smaller test split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import main_py, one_error_line, save_tiny_cnn
from faceattr.data.split_file import RECORD_KEY, read_split, split_record
from faceattr.errors import ModelError
from faceattr.models import io

TINY_SIZE = 32
SPLIT = "image,split,copies\n" + "".join(f"{i}_0_0_2017{i:09d}.jpg.chip.jpg,{s},1\n"
                                         for i, s in enumerate(["train"] * 6 + ["val"] * 2 + ["test"] * 3))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A real (untrained) CNN model folder with a whole ``split.csv`` and its record."""
    model_dir = save_tiny_cnn(tmp_path_factory.mktemp("split") / "model", TINY_SIZE)
    (model_dir / "split.csv").write_text(SPLIT)
    (model_dir / "train_summary.json").write_text(json.dumps({RECORD_KEY: split_record(model_dir / "split.csv")}))
    return model_dir


def damaged(tiny_model: Path, folder: Path, content: bytes, keep_record: bool = True) -> Path:
    shutil.copytree(tiny_model, folder)
    if not keep_record:
        (folder / "train_summary.json").unlink()
    (folder / "split.csv").write_bytes(content)
    return folder


DAMAGE = {
    "binary": (bytes(range(256)) * 4, "split.csv: "),
    "no_split_column": (SPLIT.replace("image,split,copies", "image,part,copies").encode(), "no 'split' column"),
    "cut_mid_row": (SPLIT.encode()[: len(SPLIT) // 2 + 5], "cut short"),
    "unknown_split": (SPLIT.replace(",test,", ",tset,", 1).encode(), "split 'tset' is not one of train, val, test"),
    "empty": (b"", "empty"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_split_is_one_line_naming_the_file(tmp_path, tiny_model, case):
    content, problem = DAMAGE[case]
    folder = damaged(tiny_model, tmp_path / "model", content, keep_record=False)
    with pytest.raises(ModelError) as err:
        read_split(folder)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{folder / 'split.csv'}: ") and problem in message


def test_a_split_cut_at_a_row_end_is_caught_by_its_record(tmp_path, tiny_model):
    lines = SPLIT.splitlines(keepends=True)
    folder = damaged(tiny_model, tmp_path / "model", "".join(lines[:4]).encode())
    with pytest.raises(ModelError, match=r"split.csv: lists 3 images, but the model was trained with 11"):
        read_split(folder)
    assert len(read_split(tiny_model, "test")) == 3  # the whole file reads


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "calibrate", "ensemble"])
def test_commands_report_a_damaged_split_in_one_line(tmp_path, tiny_model, fake_data, command):
    folder = damaged(tiny_model, tmp_path / "model", DAMAGE["no_split_column"][0])
    if command == "ensemble":
        other = damaged(tiny_model, tmp_path / "other", SPLIT.encode())
        args = ["ensemble", other, folder]
    else:
        args = [command, "--model_path", folder, "--model_type", "cnn", "--data_path", fake_data]
    res = main_py(*args, "evaluation.plots=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=300)
    line = one_error_line(res)
    assert f"{folder / 'split.csv'}: no 'split' column" in line


@pytest.mark.slow
def test_evaluate_refuses_a_split_cut_at_a_row_end(tmp_path, tiny_model, fake_data):
    folder = damaged(tiny_model, tmp_path / "model", "".join(SPLIT.splitlines(keepends=True)[:10]).encode())
    res = main_py("evaluate", "--model_path", folder, "--model_type", "cnn", "--data_path", fake_data,
                  "evaluation.plots=false",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=300)
    assert "lists 9 images, but the model was trained with 11" in one_error_line(res)


def test_a_truncated_keras_file_says_so(tmp_path, tiny_model):
    folder = damaged(tiny_model, tmp_path / "model", SPLIT.encode())
    keras_file = folder / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes()[: keras_file.stat().st_size * 2 // 3])
    with pytest.raises(ModelError) as err:
        io.load_model(folder)
    message = str(err.value)
    assert message.startswith(f"{keras_file}: damaged or cut short") and "not found" not in message.lower()
