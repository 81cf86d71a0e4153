"""`promote` checks the model loads before touching ``saved_model/``, swaps whole folders, and
leaves everything as it was when it fails or is stopped (Ctrl-C, SIGTERM) before the swap."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import default_sigint, save_tiny_cnn
from faceattr import writes
from faceattr.training.promote import promote

ROOT = Path(__file__).resolve().parents[2]
TINY_SIZE = 32


def main_py_args(*args: str | Path) -> list[str]:
    return [sys.executable, str(ROOT / "src" / "main.py"), *map(str, args)]


def promote_cli(run: Path, saved: Path, tmp_path: Path) -> list[str]:
    return main_py_args("promote", run, f"paths.saved_models={saved}", f"hydra.run.dir={tmp_path / 'hydra'}")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real (untrained) CNN model folder without a TensorFlow Lite export: loading it as
    ``run`` would imports TensorFlow (a few seconds: time for a signal to land)."""
    model_dir = save_tiny_cnn(tmp_path_factory.mktemp("promote") / "model", TINY_SIZE)
    (model_dir / "split.csv").write_text("image,split\na.jpg,train\nb.jpg,val\nc.jpg,test\n")
    return model_dir


@pytest.fixture
def shipped(tmp_path) -> Path:
    """A ``saved_model/`` whose ``cnn`` model is a user's (any bytes: promote must not touch it)."""
    saved = tmp_path / "saved_model"
    (saved / "cnn").mkdir(parents=True)
    (saved / "cnn" / "model_info.json").write_text(json.dumps({"model_type": "cnn", "mine": True}))
    (saved / "cnn" / "model.keras").write_bytes(b"the model in use" * 100)
    return saved


def copy_run(tiny_run: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in tiny_run.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def assert_untouched(shipped: Path, before: dict[str, str]) -> None:
    assert snapshot(shipped) == before
    assert not (shipped / ".previous").exists()
    assert not [p.name for p in shipped.iterdir() if "incoming" in p.name]


@pytest.mark.slow
def test_a_truncated_model_is_refused_and_the_shipped_model_stays(tmp_path, tiny_run, shipped):
    run = copy_run(tiny_run, tmp_path / "run")
    keras_file = run / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes()[: keras_file.stat().st_size // 2])
    before = snapshot(shipped)
    res = subprocess.run(promote_cli(run, shipped, tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(run) in errors[0] and "nothing was promoted" in errors[0], res.stderr[-2000:]
    assert_untouched(shipped, before)


def test_a_good_model_is_swapped_in_whole_and_the_previous_kept(tmp_path, tiny_run, shipped):
    run = copy_run(tiny_run, tmp_path / "run")
    before = snapshot(shipped / "cnn")
    target = promote(run, shipped)
    assert snapshot(target) == snapshot(run)
    backups = list((shipped / ".previous").iterdir())
    assert len(backups) == 1 and snapshot(backups[0]) == before
    assert not [p.name for p in shipped.iterdir() if "incoming" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_promote_changes_nothing(tmp_path, tiny_run, shipped, sig, code):
    run = copy_run(tiny_run, tmp_path / "run")
    before = snapshot(shipped)
    files = len(list(run.iterdir()))
    proc = subprocess.Popen(promote_cli(run, shipped, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    staged = None
    while time.monotonic() < deadline and proc.poll() is None:  # the copy is made, the check has begun
        staged = next((p for p in shipped.iterdir() if "incoming" in p.name), None)
        if staged is not None and len(list(staged.iterdir())) == files:
            break
        time.sleep(0.02)
    assert staged is not None and proc.poll() is None, "promote ended before it could be stopped"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (proc.returncode, err[-3000:])
    assert "Traceback" not in err
    assert_untouched(shipped, before)


@pytest.mark.slow
def test_a_second_promote_of_the_same_type_is_refused_naming_the_holder(tmp_path, tiny_run, shipped):
    run = copy_run(tiny_run, tmp_path / "run")
    before = snapshot(shipped)
    with writes.exclusive(shipped / "cnn", "promote"):
        res = subprocess.run(promote_cli(run, shipped, tmp_path), capture_output=True, text=True, timeout=300)
        assert (shipped / ".cnn.lock").is_file()
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "in use by another promote" in errors[0] and f"pid {os.getpid()}" in errors[0]
    assert_untouched(shipped, before)  # the lock file goes with its holder


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "which").write_text("a")
    (b / "which").write_text("b")
    if not writes.exchange(a, b):
        pytest.skip("this file system cannot exchange names (renameat2)")
    assert (a / "which").read_text() == "b" and (b / "which").read_text() == "a"
