"""A training stopped at any moment resumes: Ctrl-C, SIGKILL, damaged and half-written backups.

The CLI tests run ``python src/main.py train`` as a user does, on 60 synthetic faces with a
tiny CNN, and stop it with real signals; the in-process tests drive ``AtomicBackup`` through a
real Keras ``fit`` on a two-layer model, where crashes are exceptions raised between callbacks.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import default_sigint, make_fake_utkface
from faceattr.models.info import load_keras_file

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "src" / "main.py"
EPOCHS = 4
TINY_CNN = ["model.input_size=32", "model.filters=[8,16]", "model.heads.hidden_units=[16]"]


@pytest.fixture(scope="module")
def train_args(tmp_path_factory) -> list[str]:
    """``train`` arguments for a few-second run: 60 faces, a tiny CNN, no early stop."""
    base = tmp_path_factory.mktemp("faults")
    make_fake_utkface(base / "UTKFace", 60)
    return ["train", "--model_type", "cnn", "debug=smoke", f"data.path={base / 'UTKFace'}", "data.limit=60",
            f"paths.cache={base / 'cache'}", f"train.epochs={EPOCHS}", "train.batch_size=16",
            "train.early_stopping_patience=20", *TINY_CNN]


def start(args: list[str], log_dir: Path) -> subprocess.Popen:
    log_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(MAIN), *args], cwd=ROOT, text=True, preexec_fn=default_sigint,
                            stdout=(log_dir / "stdout").open("w"), stderr=(log_dir / "stderr").open("w"))


def history_rows(run: Path) -> int:
    path = run / "history.csv"
    return max(0, path.read_text().count("\n") - 1) if path.is_file() else 0


def stop_after_rows(proc: subprocess.Popen, run: Path, rows: int, sig: int) -> int:
    """Send ``sig`` as soon as ``history.csv`` holds ``rows`` epochs; the exit code."""
    deadline = time.monotonic() + 600
    while history_rows(run) < rows:
        assert proc.poll() is None, f"the run ended before epoch {rows}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(sig)
    return proc.wait(timeout=300)


def finish(cmd: list[str], log_dir: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "stdout").write_text(res.stdout)
    (log_dir / "stderr").write_text(res.stderr)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def assert_trained(run: Path, epochs: int = EPOCHS) -> None:
    """Each epoch once in history.csv (and the model's copy), the summary agrees, the model loads."""
    for history in (run / "history.csv", run / "model" / "history.csv"):
        assert list(pd.read_csv(history)["epoch"]) == list(range(epochs)), history
    assert json.loads((run / "train_summary.json").read_text())["epochs_run"] == epochs
    model = load_keras_file(run / "model" / "model.keras")
    out = model.predict_on_batch(np.zeros((1, 32, 32, 3), np.float32))
    assert np.isfinite(np.asarray(out["age"])).all()
    assert not (run / "backup").exists()  # a finished run keeps no backups


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_ctrl_c_prints_the_command_that_resumes_and_a_finished_run_is_left_alone(train_args, tmp_path):
    run = tmp_path / "run"
    args = [*train_args, f"hydra.run.dir={run}"]
    proc = start(args, tmp_path / "first")
    assert stop_after_rows(proc, run, 1, signal.SIGINT) == 130
    err = (tmp_path / "first" / "stderr").read_text()
    assert "Traceback" not in err, err[-3000:]
    # One line, the last, holds the exact command: the same command line with the run's folder.
    resume = shlex.join([sys.executable, str(MAIN), *args])
    assert [line for line in err.splitlines() if "resume" in line] == [f"interrupted; to resume, run: {resume}"]
    assert err.splitlines()[-1].endswith(resume)
    # Ctrl-C takes effect after the epoch's backup (or at a later batch's end): one is there.
    backed_up = max(json.loads(p.read_text())["epoch"] for p in (run / "backup" / "main").glob("epoch-*.json"))
    assert backed_up >= 1

    res = finish(shlex.split(resume), tmp_path / "second")
    resumed = [line.split("resuming ")[1] for line in res.stdout.splitlines() if "resuming after epoch" in line]
    assert resumed == [f"after epoch {backed_up}"]
    assert_trained(run)
    assert json.loads((run / "train_summary.json").read_text())["resumed"] is True  # its seconds: this command's

    # The same command once more: it says the run has finished, how to train on, and touches nothing.
    before = snapshot(run)
    res = finish(shlex.split(resume), tmp_path / "third")
    assert snapshot(run) == before
    assert "this training has finished (4 epochs" in res.stdout and "nothing was changed" in res.stdout
    further = res.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    assert f"train.init_from={run / 'model'}" in further and "hydra.run.dir" not in further
    assert "error" not in res.stderr.lower()


@pytest.mark.slow
def test_sigkill_mid_backup_and_a_damaged_backup_still_resume(train_args, tmp_path):
    run = tmp_path / "run"
    args = [*train_args, f"hydra.run.dir={run}"]
    # Killed as the second epoch's row lands: its backup is being written (or about to be).
    assert stop_after_rows(start(args, tmp_path / "first"), run, 2, signal.SIGKILL) == -signal.SIGKILL
    backup = run / "backup" / "main"
    slots = sorted(backup.glob("epoch-*.json"))
    assert slots, sorted(p.name for p in backup.iterdir())
    # What a crash in the middle of an in-place write leaves: the newest backup cut short ...
    weights = backup / json.loads(slots[-1].read_text())["files"]["weights"]["name"]
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    # ... and what one in the middle of this callback's own write leaves: stray temporary files.
    (backup / "partial.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    (backup / "epoch-0009.weights.h5").write_bytes(b"never committed")

    res = finish([sys.executable, str(MAIN), *args], tmp_path / "second")
    damaged = [line for line in res.stdout.splitlines() if "damaged backup" in line]
    assert len(damaged) == 1 and slots[-1].stem in damaged[0], res.stdout[-3000:]
    assert "Traceback" not in res.stderr
    assert_trained(run)


@pytest.mark.slow
def test_an_error_is_printed_once(tmp_path):
    """Any command's typed error: one line on the console, the record in the run's log file."""
    run = tmp_path / "run"
    missing = tmp_path / "nowhere.tar.gz"
    res = subprocess.run([sys.executable, str(MAIN), "stats", "--data_path", str(missing), f"hydra.run.dir={run}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: {missing}: no such file or folder"]
    assert str(missing) not in res.stdout  # no [ERROR] log line on the console besides it
    assert f"[ERROR] - {missing}: no such file or folder" in (run / "app.log").read_text()


# ------------------------------------------------------------------ in-process: AtomicBackup


class Crash(Exception):
    """A stop between two callbacks, as a kill at that moment would leave the files."""


def fit_tiny(folder: Path, epochs: int = 6, crash_at: int | None = None, crash_before_backup: bool = False,
             fingerprint: dict | None = None):
    """A two-layer model fitted with the callbacks of ``training.fit_model``; its final weights.

    SGD with a large step diverges after a few epochs, so early stopping has earlier best
    weights to put back: a resumed run must bring them along to end as an uninterrupted one.
    """
    import keras

    from faceattr.models.engine.backup import AtomicBackup

    class CrashAt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == crash_at:
                raise Crash

    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.2, momentum=0.9), "mse", run_eagerly=True)  # no tracing: faster here
    monitors = [keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True),
                keras.callbacks.ReduceLROnPlateau(patience=1, factor=0.5)]
    backup = AtomicBackup(folder / "backup", folder / "history.csv", monitors, fingerprint)
    callbacks = [*monitors, keras.callbacks.CSVLogger(folder / "history.csv", append=True), backup]
    if crash_at is not None:
        callbacks.insert(len(callbacks) - 1 if crash_before_backup else len(callbacks), CrashAt())
    _, finished = backup.restore(model)
    if not finished:
        try:
            model.fit(x, y, batch_size=len(x), shuffle=False, validation_data=(x, y), epochs=epochs,
                      callbacks=callbacks, verbose=0)
        except Crash:
            return None
    return model.get_weights()


@pytest.mark.slow
def test_a_resumed_fit_ends_as_an_uninterrupted_one(tmp_path):
    reference = fit_tiny(tmp_path / "straight")
    straight = pd.read_csv(tmp_path / "straight" / "history.csv")
    assert len(straight) < 6  # early stopping ended it, with the weights of an earlier epoch
    for crash_at, before_backup in ((0, True), (1, False), (2, True)):
        folder = tmp_path / f"crash{crash_at}"
        assert fit_tiny(folder, crash_at=crash_at, crash_before_backup=before_backup) is None
        resumed = fit_tiny(folder)
        for mine, theirs in zip(resumed, reference, strict=True):
            np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
        history = pd.read_csv(folder / "history.csv")
        assert list(history["epoch"]) == list(straight["epoch"])
        np.testing.assert_allclose(history["val_loss"], straight["val_loss"], rtol=1e-5)


@pytest.mark.slow
def test_damaged_backups_fall_back_in_one_log_line(tmp_path, caplog):
    folder = tmp_path / "run"
    assert fit_tiny(folder, crash_at=2) is None  # backups after epochs 2 and 3
    backup = folder / "backup"
    assert sorted(p.name for p in backup.glob("*.json")) == ["epoch-0002.json", "epoch-0003.json"]
    (backup / "epoch-0003.json").write_text('{"epoch": 3, "fil')  # cut short
    with caplog.at_level("INFO", logger="faceattr.models.engine.backup"):
        assert fit_tiny(folder) is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("faceattr")]
    assert len(warnings) == 1 and "epoch-0003.json" in warnings[0] and "after epoch 2" in warnings[0]
    epochs = list(pd.read_csv(folder / "history.csv")["epoch"])
    assert epochs == list(range(len(epochs)))

    # Every backup damaged: from scratch, the earlier rows dropped.
    folder = tmp_path / "all"
    assert fit_tiny(folder, crash_at=2) is None
    for weights in (folder / "backup").glob("*.weights.h5"):
        weights.write_bytes(weights.read_bytes()[:300])
    caplog.clear()
    with caplog.at_level("INFO", logger="faceattr.models.engine.backup"):
        assert fit_tiny(folder) is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("faceattr")]
    assert len(warnings) == 1 and "starting from scratch" in warnings[0]
    epochs = list(pd.read_csv(folder / "history.csv")["epoch"])
    assert epochs == list(range(len(epochs)))


@pytest.mark.slow
def test_a_half_written_keras_backup_is_reported_not_fatal(tmp_path, caplog):
    """The state ``keras.callbacks.BackupAndRestore`` left when stopped mid-write."""
    import keras

    folder = tmp_path / "run"
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    legacy = keras.callbacks.BackupAndRestore(folder / "backup", delete_checkpoint=False)
    model.fit(np.zeros((8, 4)), np.zeros((8, 1)), epochs=2, callbacks=[legacy], verbose=0)
    weights = folder / "backup" / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level("INFO", logger="faceattr.models.engine.backup"):
        assert fit_tiny(folder, epochs=3) is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("faceattr")]
    assert len(warnings) == 1 and "latest.weights.h5" in warnings[0] and "starting from scratch" in warnings[0]
    assert list(pd.read_csv(folder / "history.csv")["epoch"]) == [0, 1, 2]
    assert not weights.exists()


@pytest.mark.slow
def test_a_later_phase_backup_of_either_kind_is_found(tmp_path):
    """FaceNet's trainer skips its heads phase when the fine-tuning phase has a backup, of this
    callback's kind or of Keras' older one (which deleted the heads' backup when that phase ended)."""
    import keras

    from faceattr.models.engine.backup import has_backup

    assert not has_backup(tmp_path / "missing") and not has_backup(tmp_path)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    legacy = keras.callbacks.BackupAndRestore(tmp_path / "legacy", delete_checkpoint=False)
    model.fit(np.zeros((8, 4)), np.zeros((8, 1)), epochs=1, callbacks=[legacy], verbose=0)
    assert has_backup(tmp_path / "legacy")
    assert fit_tiny(tmp_path / "run", crash_at=0) is None  # stopped after its first epoch's backup
    assert has_backup(tmp_path / "run" / "backup")


def test_a_backup_made_with_other_settings_is_refused_in_one_line(tmp_path):
    from faceattr.errors import ConfigError
    from faceattr.models.engine.backup import check_resumable

    ours = {"model": {"name": "cnn", "filters": [8, 16]}, "split_sha256": "a" * 64}
    assert fit_tiny(tmp_path, crash_at=0, fingerprint=ours) is None
    check_resumable(tmp_path, {**ours, "model": {**ours["model"], "added_later": 1}})  # the same run: resumes
    with pytest.raises(ConfigError, match=r"backup: this unfinished training was backed up with other settings "
                                          r"\(model.filters differ\); run its own command again"):
        check_resumable(tmp_path, {**ours, "model": {"name": "cnn", "filters": [8]}})
    with pytest.raises(ConfigError, match=r"\(the data split \(split.csv\) differ\)"):
        check_resumable(tmp_path, {**ours, "split_sha256": "b" * 64})


def test_ctrl_c_during_fit_is_raised_at_a_batch_end_not_where_it_lands():
    import os

    from faceattr.models.engine.backup import SafeInterrupt

    guard = SafeInterrupt()
    # Python's own handler, as `python src/main.py` has it (a pytest-xdist worker ignores SIGINT).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with guard:
            os.kill(os.getpid(), signal.SIGINT)  # e.g. inside TensorFlow's summary writer: only noted
            assert guard.pending
            with pytest.raises(KeyboardInterrupt):
                guard.on_train_batch_end(0)
            guard.on_epoch_end(0)  # once
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt), guard:  # after the last check: raised on the way out of fit
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_history_is_cut_to_the_restored_epochs(tmp_path):
    from faceattr.models.engine.backup import truncate_history

    csv = tmp_path / "history.csv"
    # Rows of a run that went on past its last backup, a repeat, and a row cut short by a kill.
    csv.write_text("epoch,loss\n0,1.0\n1,0.9\n0,0.95\n1,0.8\n2,0.7\n3,0.")
    truncate_history(csv, 2)
    assert csv.read_text() == "epoch,loss\n0,0.95\n1,0.8\n"
    truncate_history(csv, 3, [{"loss": 0.95}, {"loss": 0.8}, {"loss": 0.7}])  # a row lost: rebuilt from the backup
    assert list(pd.read_csv(csv)["loss"]) == [0.95, 0.8, 0.7]
    truncate_history(csv, 0)
    assert not csv.exists()


@pytest.mark.slow
def test_two_phase_training_resumes_in_the_phase_it_was_stopped_in(tmp_path, caplog):
    """FaceNet's fine-tuning fits twice (``heads``, then ``finetune``), each with its own backup
    and history file; a rerun skips the finished phase and resumes the other."""
    import tensorflow as tf
    from omegaconf import OmegaConf

    from faceattr.config import model_settings
    from faceattr.models.cnn import build_cnn
    from faceattr.models.engine.loop import fit_model, join_histories

    cfg = OmegaConf.create({
        "model": OmegaConf.to_container(model_settings({"name": "cnn", "input_size": 32, "filters": [4, 8],
                                                        "heads": {"hidden_units": [8]}})),
        "train": {"schedule": "plateau", "epochs": 3, "batch_size": 8, "weight_decay": 1e-4,
                  "early_stopping_patience": 20, "lr_plateau_patience": 20, "run_eagerly": False}})
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    y = {"age": rng.uniform(1, 90, (16, 1)).astype(np.float32), "gender": rng.integers(0, 2, 16).astype(np.int32),
         "race": rng.integers(0, 5, 16).astype(np.int32)}
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def train_ds(fail_after: int | None = None) -> tf.data.Dataset:
        served = [0]

        def batches():
            for start in (0, 8):
                served[0] += 1
                if fail_after is not None and served[0] > fail_after:
                    raise RuntimeError("the machine went down")
                yield x[start:start + 8], {k: v[start:start + 8] for k, v in y.items()}

        spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32),
                {"age": tf.TensorSpec((None, 1), tf.float32), "gender": tf.TensorSpec((None,), tf.int32),
                 "race": tf.TensorSpec((None,), tf.int32)})
        return tf.data.Dataset.from_generator(batches, output_signature=spec).apply(
            tf.data.experimental.assert_cardinality(2))

    def both_phases(fail_after: int | None = None) -> None:
        model = build_cnn(cfg.model)
        frozen = [layer for layer in model.layers if "conv" in layer.name]
        for layer in frozen:
            layer.trainable = False
        fit_model(model, train_ds(), val, cfg, tmp_path, 16, 1e-3, phase="heads", epochs=2)
        for layer in frozen:
            layer.trainable = True
        fit_model(model, train_ds(fail_after), val, cfg, tmp_path, 16, 1e-4, phase="finetune")

    with pytest.raises(Exception, match="the machine went down"):
        both_phases(fail_after=5)  # the third fine-tuning epoch fails half-way
    heads = (tmp_path / "history_heads.csv").read_text()
    assert len(pd.read_csv(tmp_path / "history_finetune.csv")) == 2
    with caplog.at_level("INFO", logger="faceattr.models.engine.backup"):
        both_phases()
    messages = [r.getMessage() for r in caplog.records]
    assert any("heads: resuming after epoch 2 (fit had finished)" in m for m in messages), messages
    assert any("finetune: resuming after epoch 2" in m for m in messages), messages
    assert (tmp_path / "history_heads.csv").read_text() == heads
    assert list(pd.read_csv(tmp_path / "history_finetune.csv")["epoch"]) == [0, 1, 2]
    joined = join_histories(tmp_path / "history_heads.csv", tmp_path / "history_finetune.csv",
                            tmp_path / "history.csv")
    assert list(joined["epoch"]) == [0, 1, 2, 3, 4]
