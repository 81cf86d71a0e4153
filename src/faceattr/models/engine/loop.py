"""The Keras fit every trainer shares: callbacks, logs, backups and resume.

``fit_model`` compiles a model with the heads' losses and fits it with a best-on-validation
checkpoint, early stopping, plateau or cosine learning-rate decay, TensorBoard and CSV logs
and atomic backups (``models.engine.backup``): an interrupted run goes on after its last backed-up
epoch. The family trainers (``models.families``) call it with their own datasets.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from faceattr.config import LossWeights
from faceattr.models.engine.backup import AtomicBackup, SafeInterrupt, fingerprint
from faceattr.models.heads import compile_args

log = logging.getLogger(__name__)


class ThroughputLogger(keras.callbacks.Callback):
    """Logs training throughput (images/s) per epoch and keeps the mean for the summary."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        rate = self.images_per_epoch / (time.perf_counter() - self._start)
        self.rates.append(rate)
        log.info("epoch %d: %.1f training images/s (validation included)", epoch + 1, rate)


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the scheduled learning rate of each epoch's end into the logs (history.csv)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def search_objective(history: pd.DataFrame) -> float:
    """What ``train`` returns to a sweeper (Optuna, ``hparams_search``): the lowest validation loss
    over the epochs, with the heads' losses weighted by the schema's default loss weights
    (``faceattr.config.LossWeights``: age 0.1, gender 1, race 1) whatever this run's own.

    The run's ``val_loss`` carries its own ``model.heads.loss_weights``, so a search over those
    would rank a trial higher just for weighing a head less; on one fixed scale it cannot.
    Falls back to ``val_loss`` when the history has no per-head validation losses.
    """
    weights = {name: float(value) for name, value in asdict(LossWeights()).items()}
    columns = {name: f"val_{name}_loss" for name in weights}
    if not all(column in history for column in columns.values()):
        return float(history["val_loss"].min())
    return float(sum(weight * history[columns[name]] for name, weight in weights.items()).min())


def backup_fingerprint(cfg: DictConfig, run_dir: Path) -> dict:
    """What a run's backups must share with the run that resumes them: model settings and split."""
    return fingerprint(OmegaConf.to_container(cfg.model, resolve=True), run_dir / "split.csv")


def _learning_rate(schedule: str, learning_rate: float,
                   steps: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimiser's learning rate: ``learning_rate`` (``plateau``: the callback lowers it), or
    for ``cosine`` its decay to 1 % over ``steps`` optimiser steps."""
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.01)
    return learning_rate


def fit_model(model: keras.Model, train_ds, val_ds, cfg: DictConfig, run_dir: Path,
              images_per_epoch: int, learning_rate: float, phase: str = "",
              epochs: int | None = None, losses: dict | None = None) -> pd.DataFrame:
    """Compile and fit with the standard callbacks; returns the epoch history as a frame.

    ``epochs`` defaults to ``train.epochs``; ``losses`` (``loss``/``metrics``/``loss_weights``
    as ``models.heads.compile_args`` returns them) replaces the heads' own, e.g. for
    probability targets in distillation.

    ``train.schedule``: ``plateau`` halves the learning rate when val_loss stalls; ``cosine``
    decays it from ``learning_rate`` to 1 % over ``train.epochs`` (steady weights at the end,
    where noisy validation metrics made checkpoint selection a lottery).
    """
    schedule = str(cfg.train.schedule)  # plateau | cosine (faceattr.config checked it)
    epochs = int(cfg.train.epochs if epochs is None else epochs)
    lr = _learning_rate(schedule, learning_rate, math.ceil(images_per_epoch / int(cfg.train.batch_size)) * epochs)
    if cfg.train.run_eagerly:
        log.info("train.run_eagerly: training steps run as plain Python, not traced into a graph")
    model.compile(optimizer=keras.optimizers.AdamW(lr, weight_decay=cfg.train.weight_decay),
                  run_eagerly=bool(cfg.train.run_eagerly),
                  **(compile_args(cfg.model.heads) if losses is None else losses))
    throughput = ThroughputLogger(images_per_epoch)
    suffix = f"_{phase}" if phase else ""
    history_csv = run_dir / f"history{suffix}.csv"
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    monitors = [
        keras.callbacks.ModelCheckpoint(run_dir / "checkpoints" / f"best{suffix}.weights.h5",
                                        monitor="val_loss", save_best_only=True, save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.train.early_stopping_patience,
                                      restore_best_weights=True),
    ]
    if schedule == "plateau":
        monitors.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                          patience=cfg.train.lr_plateau_patience, min_lr=1e-6))
    # Last, after the monitors and the CSV log: each backup holds the epoch's final state.
    backup = AtomicBackup(run_dir / "backup" / (phase or "main"), history_csv, monitors,
                          backup_fingerprint(cfg, run_dir))
    interrupt = SafeInterrupt()  # Ctrl-C: out of fit between batches, after the epoch's backup
    callbacks = [
        *monitors,
        *([] if schedule == "plateau" else [LearningRateLogger()]),
        keras.callbacks.CSVLogger(history_csv, append=True),
        keras.callbacks.TensorBoard(run_dir / "tensorboard" / (phase or "main"), write_graph=False),
        throughput,
        backup,
        interrupt,
    ]
    _, finished = backup.restore(model)  # an interrupted run goes on after its last backed-up epoch
    if not finished:
        with interrupt:
            # shuffle=False: the datasets shuffle themselves (data.pipeline, the families' own);
            # Keras ignores its shuffle for a tf.data.Dataset and warns when asked to.
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                      shuffle=False, verbose="auto")
    if throughput.rates:
        log.info("training throughput%s: %.1f images/s (mean over %d epochs)",
                 f" ({phase})" if phase else "", float(np.mean(throughput.rates)), len(throughput.rates))
    return pd.read_csv(history_csv)


def join_histories(earlier_csv: Path, this_csv: Path, out_csv: Path) -> pd.DataFrame:
    """Write the epoch log of a continued model: the earlier runs' epochs, then this run's with
    ``epoch`` numbered on from them. Without an earlier log, this run's alone."""
    this = pd.read_csv(this_csv)
    if Path(earlier_csv).is_file():
        earlier = pd.read_csv(earlier_csv)
        this = this.assign(epoch=this["epoch"] + int(earlier["epoch"].max()) + 1)
        this = pd.concat([earlier, this], ignore_index=True)
    this.to_csv(out_csv, index=False)
    return this
