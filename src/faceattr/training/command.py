"""Training one run (the ``train`` command's work): training and optional test-split evaluation, for any
model family.

Flow: prepare data (index, dedup, split, rebalance the training split only) -> dataset
statistics -> the trainer of ``model.name``'s family (``models.families``) -> Keras ``fit``
(``models.engine.loop``) with a best-on-validation checkpoint, early stopping, LR decay, TensorBoard
and CSV logs and atomic backups -> save to ``<run dir>/model`` -> optional test evaluation
(``--eval``, ``evaluation.model_dir``) -> optional promotion to ``saved_model/`` (``promote=true``).

Resume an interrupted run by running the same command with ``hydra.run.dir=<its folder>``
(what Ctrl-C prints): it picks up after the last backed-up epoch (``models.engine.backup``). The
same command on a finished run changes nothing; ``train.init_from=<its model folder>`` trains on.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import keras
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from faceattr import writes
from faceattr.data.prepare import prepare_dataset
from faceattr.data.split_file import RECORD_KEY, SPLIT_FILE, read_split, split_record
from faceattr.data.stats import write_statistics
from faceattr.errors import ConfigError, WriteError
from faceattr.evaluation.model_dir import evaluate_split
from faceattr.inference.chips import align_training_photos
from faceattr.models.engine.backup import check_resumable, has_backup
from faceattr.models.engine.loop import backup_fingerprint, join_histories, search_objective
from faceattr.models.export import export_tflite
from faceattr.models.families import Trainer, family
from faceattr.models.info import ModelInfo
from faceattr.training.promote import promote_as_configured
from faceattr.training.state import SUMMARY, finished_message, finished_summary, write_atomic

log = logging.getLogger(__name__)


def check_init_split(init_dir: Path, frame: pd.DataFrame) -> None:
    """Refuse to start from a model that trained on an image this run validates or tests on.

    ``init_dir/split.csv`` is the starting model's split; ``frame`` this run's (``image``,
    ``split``). Continuing from weights that saw a test face would leak it into the scores.
    """
    split_csv = Path(init_dir) / "split.csv"
    if not split_csv.is_file():
        raise ConfigError(f"train.init_from: {split_csv} missing; without the starting model's split "
                          "its training images can't be kept out of this run's val/test split")
    seen = set(read_split(Path(init_dir), "train")["image"])  # checked: a damaged file is one line
    held_out = frame[frame.split.isin(["val", "test"])]
    leaked = held_out[held_out["image"].isin(seen)]
    if len(leaked):
        raise ConfigError(f"train.init_from: {init_dir} was trained on {len(leaked)} image(s) of this run's "
                          f"val/test split (e.g. {leaked['image'].iloc[0]}); use the same data and split seed")


def make_trainer(cfg: DictConfig, frame: pd.DataFrame | None = None) -> Trainer:
    """A trainer for ``model.name`` (its family's); with ``train.init_from`` (a model folder) its
    weights are the starting point, after checking that they are of this family and size, that
    the family can continue them, and against ``frame`` that they never trained on a val/test image."""
    model_family = family(str(cfg.model.name))
    init_from = cfg.train.init_from
    if not init_from:
        return model_family.trainer(cfg)
    init_dir = Path(str(init_from))
    info = ModelInfo.read(init_dir)
    if info.model_type != cfg.model.name or info.input_size != int(cfg.model.input_size):
        raise ConfigError(f"train.init_from: {init_dir} holds a {info.model_type} model at "
                          f"{info.input_size}px, this run trains {cfg.model.name} at {cfg.model.input_size}px")
    model_family.check_init_from(cfg, init_dir, info)
    if frame is not None:
        check_init_split(init_dir, frame)
    return model_family.trainer_from(cfg, init_dir, info)


#: Room a training run folder needs beyond its model's share: statistics, plots, logs, history (bytes).
ROOM_MARGIN = 20_000_000
#: Bytes per model parameter a run writes: the best checkpoint (float32), two backup slots of the
#: model and its Adam state (4 float32 each), the saved model (int8 kernels) and its export, rounded up.
ROOM_PER_PARAMETER = 48


def check_room(run_dir: Path, parameters: int = 0) -> None:
    """Refuse to train, in one line, when the disk of ``run_dir`` lacks the room the run will write
    (``ROOM_MARGIN`` + ``ROOM_PER_PARAMETER`` per parameter): Keras' HDF5 checkpoints fail on a
    full disk with pages of errors, or a crash, far into the training."""
    probe = Path(run_dir)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = ROOM_MARGIN + ROOM_PER_PARAMETER * int(parameters)
    if free < need:
        raise WriteError(f"{run_dir}: {free / 1e6:.1f} MB free on its disk; training writes about "
                         f"{need / 1e6:.0f} MB there (checkpoints, backups, the model, plots); free some space "
                         "or set hydra.run.dir=<a folder on a disk with room>")


def train_run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train, save to ``<run dir>/model``, optionally evaluate/promote.

    A run folder whose training finished is left as it is (its summary comes back); an
    unfinished one resumes from its backups (``models.engine.backup``). A second ``train`` into a
    run folder in use is refused in one line naming the first (``writes.exclusive``).
    """
    with writes.exclusive(Path(run_dir), "train"):
        return _train(cfg, Path(run_dir))


def save_model(trainer: Trainer, cfg: DictConfig, run_dir: Path) -> Path:
    """Save the trained model into ``<run dir>/model`` with the run's exact split and training
    curves (a continued model's: its whole training, earlier runs first); the model folder."""
    model_dir = run_dir / "model"
    trainer.save(model_dir, trained_with=OmegaConf.to_container(cfg, resolve=True))
    # The exact test split and the training curves travel with the model (evaluate, promote).
    shutil.copy(run_dir / "split.csv", model_dir / "split.csv")
    init_from = cfg.train.init_from
    if init_from:  # a continued model's curves show its whole training, earlier runs first
        join_histories(Path(str(init_from)) / "history.csv", run_dir / "history.csv", model_dir / "history.csv")
    else:
        shutil.copy(run_dir / "history.csv", model_dir / "history.csv")
    return model_dir


def evaluate_trained(trainer: Trainer, frame: pd.DataFrame, cfg: DictConfig, run_dir: Path) -> dict:
    """``train --eval``: the trained model's figures on ``frame``'s test split (reports in the
    run folder) as ``{"test": ...}``, with ``"val"`` for the sources without a test split."""
    test = frame[frame.split == "test"]
    out = {"test": evaluate_split(trainer, test, cfg, run_dir, run_dir / "history.csv")}
    # A source with no test split of its own (FairFace's train/val) is reported on its val split.
    val = frame[(frame.split == "val") & ~frame["source"].isin(set(test["source"]))]
    if len(val):
        out["val"] = evaluate_split(trainer, val, cfg, run_dir / "val", None, split="val")
        log.info("%s: no test split; their validation split's evaluation is in %s",
                 ", ".join(sorted(set(val["source"]))), run_dir / "val")
    return out


def _train(cfg: DictConfig, run_dir: Path) -> dict:
    """The body of ``train_run``, with the run folder held."""
    finished = finished_summary(run_dir)
    if finished is not None:  # e.g. a sweep run again: its finished jobs are not trained twice
        log.info("%s", finished_message(run_dir, finished))
        return finished
    # Experiments that continue a model say so with train.require_init_from: a "???" value would
    # not do, since OmegaConf keeps the default's null when merging a missing value over it.
    if cfg.train.require_init_from and not cfg.train.init_from:
        raise ConfigError("train.init_from: this experiment continues a trained model; "
                          "give its folder, e.g. train.init_from=outputs/train/<date>/<time>/model")
    family(str(cfg.model.name))  # an unknown family is one line before the data is touched
    check_room(run_dir)  # a full disk is one line before the data is touched, too
    keras.utils.set_random_seed(int(cfg.seed))
    prepared = prepare_dataset(cfg.data, cfg.rebalance, run_dir, aligner=align_training_photos)
    check_resumable(run_dir / "backup", backup_fingerprint(cfg, run_dir))  # before features and training
    write_statistics(prepared, run_dir / "statistics", formats=tuple(cfg.evaluation.formats),
                     dpi=int(cfg.evaluation.dpi), plots=bool(cfg.train.data_plots))
    frame = prepared.frame
    trainer = make_trainer(cfg, frame)
    model = getattr(trainer, "model", None)
    check_room(run_dir, model.count_params() if hasattr(model, "count_params") else 0)
    backup_root = run_dir / "backup"
    resumed = backup_root.is_dir() and any(has_backup(folder) for folder in backup_root.iterdir())
    start = time.perf_counter()
    history = trainer.fit(frame, run_dir)
    train_seconds = time.perf_counter() - start
    model_dir = save_model(trainer, cfg, run_dir)
    init_from = cfg.train.init_from
    summary = {
        "model_dir": str(model_dir),
        "train_seconds": round(train_seconds, 1),
        "epochs_run": int(len(history)),
        "best_val_loss": float(history["val_loss"].min()),
        "objective": search_objective(history),  # fixed loss weights: comparable across trials
        RECORD_KEY: split_record(model_dir / SPLIT_FILE),  # read_split knows a damaged copy by it
    }
    if init_from:
        summary["init_from"] = str(init_from)  # train_seconds and epochs_run count this run only
    if resumed:
        summary["resumed"] = True  # train_seconds counts the last command only; app.log has them all
    if cfg.export.tflite:  # what `run` serves by default (models.export)
        summary["tflite"] = str(export_tflite(model_dir, Path(cfg.paths.cache), str(cfg.export.quantization)))
    summary.update(trainer.extra_summary())  # e.g. FaceNet's feature extraction cost
    if cfg.train.eval:
        summary.update(evaluate_trained(trainer, frame, cfg, run_dir))
    # The model keeps its training record when promoted; the run folder's copy, written last,
    # marks the run finished, and its backups are no longer needed.
    for folder in (model_dir, run_dir):
        write_atomic(folder / SUMMARY, json.dumps(summary, indent=2))
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    print(f"Model saved to {model_dir}")
    if cfg.promote:
        promote_as_configured(model_dir, cfg)
    return summary
