"""Paths given to flags are taken literally, whatever characters they hold (``${``, quotes,
backslashes, commas), and files are written in UTF-8 whatever the locale says."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import pytest

from conftest import main_py
from faceattr.cli import flags_to_overrides
from faceattr.config import compose_config

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
SHIPPED_NORMAL = ROOT / "saved_model" / "cnn"
ODD_PATHS = [
    "photos/a${x}b.jpg", "res_${oc.env:HOSTNAME,x}.csv", "${", "$${a}}", "a\\${x}.jpg", "x\\\\\\${y}",
    "a\\b.jpg", "trailing\\", "it's.jpg", "x\\'y", "a,b [c] {d}.jpg", "ä ö/ü ${z",
]


def small_photo(path: Path) -> Path:
    """A small real photo (the astronaut, shrunk) written with cv2 (which handles any path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = cv2.resize(cv2.imread(str(ASTRONAUT)), (160, 160), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def shipped_normal() -> list[str]:
    if not (SHIPPED_NORMAL / "model.tflite").is_file():
        pytest.skip("needs the shipped saved_model/cnn/model.tflite")
    return ["--model_type", "cnn"]


@pytest.mark.parametrize("path", ODD_PATHS)
def test_flag_paths_reach_the_config_unchanged(path):
    overrides = flags_to_overrides("run", ["--img", path, path, "--output", path])
    cfg = compose_config([*overrides, "command=run"])
    assert list(cfg.run.img) == [path, path]
    assert cfg.run.output == path
    overrides = flags_to_overrides("evaluate", ["--labels", path, "--model_path", path, "--data_path", path])
    cfg = compose_config([*overrides, "command=evaluate"])
    assert (cfg.evaluation.labels, cfg.model_path, cfg.data.path) == (path, path, path)


@pytest.mark.slow
def test_dollar_brace_in_img_and_output_is_a_plain_file_name(tmp_path):
    model = shipped_normal()
    photo = small_photo(tmp_path / "photos" / "a${x}b.jpg")
    output = tmp_path / "res_${oc.env:HOSTNAME,x}.csv"
    res = main_py("run", "--img", photo, "--output", output, *model, "--no-display", "--no-annotate",
                  "detector=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert output.is_file(), sorted(p.name for p in tmp_path.iterdir())
    assert not (tmp_path / "res_x.csv").exists()
    with output.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["image"] == str(photo)


@pytest.mark.slow
def test_non_ascii_path_under_the_c_locale_is_written_in_utf8(tmp_path):
    model = shipped_normal()
    photo = small_photo(tmp_path / "фото" / "José_ü.jpg")
    output = tmp_path / "préds.csv"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    res = main_py("run", "--img", photo, "--output", output, *model, "--no-display", "detector=none",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    rows = list(csv.DictReader(output.open(encoding="utf-8")))
    assert [r["image"] for r in rows] == [str(photo)]
    assert not [p for p in tmp_path.rglob("*.tmp")]


@pytest.mark.slow
def test_gif_and_jfif_in_a_folder_are_read_and_extra_frames_are_said_once(tmp_path):
    import io

    from PIL import Image

    model = shipped_normal()
    folder = tmp_path / "in"
    rgb = cv2.cvtColor(cv2.resize(cv2.imread(str(ASTRONAUT)), (96, 96)), cv2.COLOR_BGR2RGB)
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb), Image.fromarray(rgb[::-1].copy())]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    small_photo(folder / "b.jfif")
    (folder / "a.gif").write_bytes(buf.getvalue())
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:2])
    (folder / "c.tif").write_bytes(buf.getvalue())
    res = main_py("run", "--img", folder, *model, "--no-display", "--no-annotate", "detector=none",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "run" / "predictions.csv").open(encoding="utf-8")))
    assert [Path(r["image"]).name for r in rows] == ["a.gif", "b.jfif", "c.tif"]
    said = [line for line in (res.stdout + res.stderr).splitlines() if "only the first is used" in line]
    assert len(said) == 2 and "a.gif: 3 frames or pages" in said[0] and "c.tif: 2 frames or pages" in said[1]
