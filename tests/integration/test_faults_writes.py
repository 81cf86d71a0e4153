"""What the toolkit writes, under real faults: a full disk (a small tmpfs), a read-only current
folder, a second run writing the same file, SIGTERM in the middle of a folder of photos.
Always one line naming the path, no traceback, no temporary left behind, nothing half-written."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import default_sigint, main_py, one_error_line
from faceattr import writes

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
SHIPPED_NORMAL = ROOT / "saved_model" / "cnn"


def shipped_normal() -> list[str]:
    if not (SHIPPED_NORMAL / "model.tflite").is_file():
        pytest.skip("needs the shipped saved_model/cnn/model.tflite")
    return ["--model_type", "cnn"]


def photos(folder: Path, n: int, size: int = 160) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image = cv2.resize(cv2.imread(str(ASTRONAUT)), (size, size), interpolation=cv2.INTER_AREA)
    for i in range(n):
        image[0, 0] = (i % 256, i // 256, 7)  # every photo its own bytes
        assert cv2.imwrite(str(folder / f"p{i:04d}.jpg"), image)
    return folder


def tmpfs(folder: Path, size: str, readonly: bool = False) -> Path:
    """A real tmpfs of ``size`` at ``folder`` (root only); the caller unmounts it."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    opts = f"size={size}" + (",ro" if readonly else "")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    return folder


@pytest.fixture
def mounts():
    made: list[Path] = []
    yield made
    for folder in made:
        subprocess.run(["umount", str(folder)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` until about ``leave`` bytes are free."""
    with open(folder / "filler.bin", "wb") as fh:
        try:
            while os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize > leave:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError:
            pass


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".lock", ".partial")))


# ------------------------------------------------------------------------------ (4) full disk
@pytest.mark.slow
@pytest.mark.parametrize("what", ["predictions", "annotated"])
def test_a_full_disk_is_one_line_naming_the_path(tmp_path, mounts, what):
    model = shipped_normal()
    full = tmpfs(tmp_path / "full", "2m")
    mounts.append(full)
    inputs = photos(tmp_path / "in", 12, size=400)
    if what == "predictions":
        fill(full, 0)
        args = ["--no-annotate"]
    else:
        fill(full, 300_000)  # room for a few annotated copies, not twelve
        args = [f"run.annotated_dir={full / 'annotated'}"]
    res = main_py("run", "--img", inputs, "--output", full / "preds.csv", *model, *args, "--no-display",
                  "detector=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=300)
    line = one_error_line(res)
    assert f"{full}/" in line and "no space left on the device" in line, line
    assert not (full / "preds.csv").exists()
    assert leftovers(full) == []
    if what == "annotated":  # every annotated copy there is whole
        for p in (full / "annotated").iterdir():
            assert cv2.imread(str(p)) is not None, p.name


def test_replacing_leaves_the_old_file_when_the_disk_fills(tmp_path, mounts):
    full = tmpfs(tmp_path / "full", "1m")
    mounts.append(full)
    target = full / "metrics.json"
    target.write_text("the old figures\n")
    fill(full, 0)
    with pytest.raises(writes.WriteError, match=f"{target}: cannot be written: no space left"):
        writes.write_text(target, "x" * 2_000_000)
    assert target.read_text() == "the old figures\n" and leftovers(full) == []


# ------------------------------------------------------------------------------ (11) read-only folder
def test_a_read_only_current_folder_is_one_line(tmp_path, mounts):
    model = shipped_normal()
    readonly = tmpfs(tmp_path / "ro", "1m", readonly=True)
    mounts.append(readonly)
    photo = photos(tmp_path / "in", 1) / "p0000.jpg"
    res = main_py("run", "--img", photo, *model, "--no-display", "detector=none", cwd=readonly, timeout=300)
    line = one_error_line(res)
    assert str(readonly / "outputs") in line and "hydra.run.dir=" in line, line


# ------------------------------------------------------------------------------ (3) two writers
@pytest.mark.slow
def test_a_second_run_to_the_same_output_is_refused_naming_the_first(tmp_path):
    model = shipped_normal()
    inputs = photos(tmp_path / "in", 3)
    output = tmp_path / "preds.csv"
    with writes.exclusive(output, "run"):  # this process is the first run
        res = main_py("run", "--img", inputs, "--output", output, *model, "--no-display", "--no-annotate",
                      "detector=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=300)
    line = one_error_line(res)
    assert f"{output}: in use by another run (pid {os.getpid()}" in line
    assert not output.exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ (14) SIGTERM mid-folder
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_folder_keeps_what_was_done(tmp_path, sig, code):
    model = shipped_normal()
    inputs = photos(tmp_path / "in", 1500, size=96)
    output = tmp_path / "preds.csv"
    annotated = tmp_path / "run" / "annotated"
    cmd = [sys.executable, str(ROOT / "src" / "main.py"), "run", "--img", inputs, "--output", output, *model,
           "--no-display", "detector=none", "run.batch_size=8", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(list(map(str, cmd)), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if annotated.is_dir() and len(os.listdir(annotated)) >= 24:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (proc.returncode, err[-3000:])
    assert "Traceback" not in err
    with output.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert 24 <= len(rows) < 1500
    assert len({r["image"] for r in rows}) == len(rows)  # whole rows, one per photo (one face each)
    stopped = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert stopped == [f"stopped: the {len(rows)} faces labelled so far (of 1500 images) are in {output}"]
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ (13) two trainings
@pytest.mark.slow
def test_a_second_train_into_a_run_folder_in_use_is_one_line(tmp_path, fake_data):
    run = tmp_path / "run"
    with writes.exclusive(run, "train"):  # this process is the first training
        res = main_py("train", "--data_path", fake_data, "debug=smoke", f"hydra.run.dir={run}", cwd=tmp_path,
                      timeout=300)
    line = one_error_line(res)
    assert f"{run}: in use by another train (pid {os.getpid()}" in line
    assert not (run / "model").exists() and not (run / "backup").exists()
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ (2) SIGTERM mid-video
def write_clip(path: Path, frames: int, fps: float = 10.0) -> Path:
    face = cv2.resize(cv2.imread(str(ASTRONAUT)), (64, 64), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (128, 96))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((96, 128, 3), 90, np.uint8)
        frame[16:80, (i % 64):(i % 64) + 64] = face
        writer.write(frame)
    writer.release()
    return path


@pytest.mark.slow
def test_sigterm_mid_video_leaves_a_video_that_opens(tmp_path):
    model = shipped_normal()
    clip = write_clip(tmp_path / "clip.mp4", 200)  # 20 s played at its own 10 fps
    output = tmp_path / "out.mp4"
    cmd = [sys.executable, str(ROOT / "src" / "main.py"), "run", "--video", clip, "--output", output, *model,
           "--no-display", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(list(map(str, cmd)), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(tmp_path.glob(".out.*.partial.mp4")):
        time.sleep(0.05)
    time.sleep(2.0)  # some frames written
    assert proc.poll() is None, "the video ended before it could be stopped"
    assert not output.exists()  # only the temporary while it is written
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "(interrupted)" in out
    cap = cv2.VideoCapture(str(output))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, _ = cap.read()
    cap.release()
    assert ok and 0 < frames < 200, frames
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.slow
def test_a_video_cut_short_says_so(tmp_path):
    model = shipped_normal()
    whole = tmp_path / "whole.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    face = cv2.resize(cv2.imread(str(ASTRONAUT)), (64, 64), interpolation=cv2.INTER_AREA)
    for i in range(40):
        frame = np.full((64, 96, 3), 90, np.uint8)
        frame[:, (i % 32):(i % 32) + 64] = face
        writer.write(frame)
    writer.release()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for clip, warned in ((whole, False), (cut, True)):
        res = main_py("run", "--video", clip, *model, "--no-display", "run.sync=true", "detector=none",
                      f"hydra.run.dir={tmp_path / clip.stem}", cwd=tmp_path, timeout=300)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
        said = [line for line in (res.stdout + res.stderr).splitlines() if "may be cut short" in line]
        assert len(said) == int(warned), res.stdout[-2000:]
        if warned:
            assert f"{cut}: the video ends at frame " in said[0] and "of the 40 its header announces" in said[0]


@pytest.mark.slow
def test_export_onto_a_full_disk_is_one_line_and_leaves_the_folder_as_it_was(tmp_path, mounts):
    """A real CNN model folder on a tmpfs with no room for its TensorFlow Lite file."""
    from omegaconf import OmegaConf

    from faceattr.models import io
    from faceattr.models.cnn import build_cnn
    from faceattr.models.info import ModelInfo

    full = tmpfs(tmp_path / "full", "4m")
    mounts.append(full)
    heads_cfg = {"hidden_units": [8], "dropout": 0.0, "age_loss": "huber", "huber_delta": 5.0,
                 "age_mode": "regression", "loss_weights": {"age": 0.1, "gender": 1.0, "race": 1.0}}
    cfg = OmegaConf.create({"name": "cnn", "input_size": 32, "filters": [8, 16], "convs_per_stage": 1,
                            "residual": True, "dropout": 0.0, "heads": heads_cfg})
    model_dir = full / "model"
    io.save_model(model_dir, ModelInfo(model_type="cnn", input_size=32), build_cnn(cfg))
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    fill(full, 0)
    res = main_py("export", model_dir, f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache={tmp_path / 'cache'}",
                  cwd=tmp_path, timeout=600)
    line = one_error_line(res)
    assert str(model_dir) in line and "no space left on the device" in line, line
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    assert leftovers(full) == []


@pytest.mark.slow
def test_train_onto_a_full_disk_is_one_line_before_any_work(tmp_path, mounts, fake_data):
    """Keras' HDF5 checkpoints on a full disk print pages of h5py errors, or crash; the run
    folder's room is checked before the data is touched."""
    small = tmpfs(tmp_path / "small", "3m")
    mounts.append(small)
    res = main_py("train", "--data_path", fake_data, "debug=smoke", "model=cnn", "model.input_size=32",
                  "model.filters=[8,16]", f"hydra.run.dir={small / 'run'}", f"paths.cache={tmp_path / 'cache'}",
                  cwd=tmp_path, timeout=600)
    line = one_error_line(res)
    assert f"{small / 'run'}: " in line and "MB free on its disk" in line and "hydra.run.dir=" in line, line
    assert not (small / "run" / "checkpoints").exists() and not (small / "run" / "statistics").exists()
