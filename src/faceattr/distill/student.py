"""The student: a model of the toolkit trained on targets mixed from true labels and a teacher.

Targets per training face (``distill.alpha`` = a, ``distill.temperature`` = T):

- age (years): ``a * teacher_age + (1 - a) * true_age``;
- gender, race: ``a * soften(teacher_probs, T) + (1 - a) * one_hot(true)``, where
  ``soften(p, T) = p ** (1/T) / sum(p ** (1/T))`` (the teacher's softmax at temperature T);
- an unlabelled face: the teacher's alone (a = 1).

Validation faces keep their true labels (one-hot), so ``val_loss`` and the checkpoint chosen on
it measure the student against the truth, as for ``train``. The model is built, fitted
(``models.engine.loop.fit_model``: the same callbacks, backups, schedules) and saved by the toolkit's own
code; only the losses of the class heads change, to cross-entropy on probability targets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from omegaconf import DictConfig

from faceattr.data.pipeline import make_dataset
from faceattr.data.targets import age_intervals, uses_weights
from faceattr.errors import ConfigError
from faceattr.labels import GENDERS, RACES
from faceattr.models.engine.loop import fit_model
from faceattr.models.families import ImageModelTrainer, family, family_names
from faceattr.models.heads import compile_args
from faceattr.training.command import make_trainer

log = logging.getLogger(__name__)


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """(N, K) probabilities at temperature ``temperature`` (> 1 flattens), rows summing to 1."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-7, 1.0)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def mix_targets(frame: pd.DataFrame, teacher: Mapping[str, np.ndarray], alpha: float,
                temperature: float) -> dict[str, np.ndarray]:
    """Targets for every row of ``frame`` (columns ``split``, ``labelled``, ``age``, ``gender``,
    ``race``, and ``age_lo``/``age_hi`` where ages are groups; -1 or NaN where a label is missing:
    the teacher alone then, on the training split); ``teacher`` holds ``age`` (N,), ``gender``
    (N, 2), ``race`` (N, 5) in frame order (rows outside the training split are not read and may be NaN).

    Returns ``age`` float32 (N, 2) ``[lo, hi]`` years (a training face: its mixed target twice; a
    validation face: its labelled interval, as ``train`` validates, ``data.targets.age_intervals``),
    ``gender`` (N, 2), ``race`` (N, 5) float32 probabilities.
    """
    n = len(frame)
    train = (frame["split"] == "train").to_numpy()
    labelled = frame["labelled"].to_numpy(bool)

    def weights(has_label: np.ndarray) -> np.ndarray:  # the teacher's share: alpha where a label exists, else all
        return np.where(train, np.where(has_label, float(alpha), 1.0), 0.0).astype(np.float32)

    # Age: an exact age, or for an age group the nearest age inside it to the teacher's (what the
    # interval loss would pull toward); a face without an age is NaN outside training (no loss).
    t_age = np.where(train, np.nan_to_num(np.asarray(teacher["age"], np.float32)), 0.0)
    intervals = age_intervals(frame)  # the labels, (N, 2) [lo, hi] years, as `train` reads them
    lo, hi = intervals[:, 0], intervals[:, 1]
    has_age = labelled & ~np.isnan(lo)
    true_age = np.where(has_age, np.clip(t_age, lo, hi), np.nan)
    true_age = np.where(has_age & frame["age"].notna().to_numpy(), frame["age"].to_numpy(np.float32), true_age)
    w = weights(has_age)
    age = np.where(w == 1.0, t_age, w * t_age + (1 - w) * np.nan_to_num(true_age))
    # Validation keeps the labels themselves: an age group is scored by the interval loss (0 inside).
    out = {"age": np.where(train[:, None], age[:, None], intervals).astype(np.float32)}
    for task, classes in (("gender", GENDERS), ("race", RACES)):
        codes = frame[task].to_numpy(int)
        has_label = labelled & (codes >= 0)  # -1: not labelled, the teacher alone
        one_hot = np.zeros((n, len(classes)), np.float32)
        one_hot[np.flatnonzero(has_label), codes[has_label]] = 1.0
        w = weights(has_label)
        probs = np.nan_to_num(np.asarray(teacher[task], np.float32), nan=1.0 / len(classes))
        out[task] = (w[:, None] * soften(probs, temperature) + (1 - w[:, None]) * one_hot).astype(np.float32)
    return out


def soft_compile_args(heads_cfg: DictConfig) -> dict:
    """``models.heads.compile_args`` with the class heads on probability targets."""
    args = compile_args(heads_cfg)
    for task in ("gender", "race"):
        args["loss"][task] = keras.losses.CategoricalCrossentropy()
        args["metrics"][task] = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    return args


def student_dataset(frame: pd.DataFrame, targets: Mapping[str, np.ndarray], cfg: DictConfig,
                    training: bool) -> tf.data.Dataset:
    """Batches of (images float32 (B, S, S, 3) RGB [0, 255], targets) for ``frame``'s rows.

    The toolkit's pipeline (``data.pipeline.make_dataset``: decode, cache, oversampling, shuffle,
    augmentation) carries each row's position in its ``age`` label; the targets are looked up by it.
    """
    rows = np.arange(len(frame), dtype=float)
    indexed = frame.assign(age=rows, age_lo=rows, age_hi=rows, gender=0, race=0)
    ds = make_dataset(indexed, int(cfg.model.input_size), int(cfg.train.batch_size), training=training,
                      augment_cfg=cfg.data.augment, shuffle_buffer=int(cfg.data.shuffle_buffer),
                      seed=int(cfg.seed), with_weights=training and uses_weights(cfg, frame))
    table = {task: tf.constant(values) for task, values in targets.items()}

    def lookup(x, y, *weights):
        rows = tf.cast(tf.round(y["age"][:, 0]), tf.int32)
        return (x, {task: tf.gather(values, rows) for task, values in table.items()}, *weights)

    return ds.map(lookup, num_parallel_calls=tf.data.AUTOTUNE)


def check_student_family(cfg: DictConfig) -> None:
    """Refuse a student family this module can't feed yet (before any data is touched): one
    whose models take a frozen trunk's cached outputs instead of the face image."""
    if family(str(cfg.model.name)).shares_trunk:
        takes_images = [name for name in family_names() if not family(name).shares_trunk]
        raise ConfigError(f"model={cfg.model.name}: distill trains students that take the face image "
                          f"({', '.join(takes_images)}); a {cfg.model.name} student is not supported yet")


def student_trainer(cfg: DictConfig, frame: pd.DataFrame) -> ImageModelTrainer:
    """The trainer of ``model.name`` as ``train`` makes it (``training.command.make_trainer``;
    ``train.init_from``: its weights, checked against ``frame``'s split). A student's family takes
    the face image (``check_student_family``), so its trainer holds the whole model it fits."""
    return make_trainer(cfg, frame)


def fit_student(trainer: ImageModelTrainer, frame: pd.DataFrame, targets: Mapping[str, np.ndarray], cfg: DictConfig,
                run_dir: Path) -> pd.DataFrame:
    """Fit ``trainer.model`` (a toolkit trainer for ``model.name``) on the training rows of
    ``frame``, validating on its val rows; returns the epoch history (``history.csv``)."""
    train_rows = (frame["split"] == "train").to_numpy()
    val_rows = (frame["split"] == "val").to_numpy()
    train_ds = student_dataset(frame[train_rows], {k: v[train_rows] for k, v in targets.items()}, cfg, True)
    val_ds = student_dataset(frame[val_rows], {k: v[val_rows] for k, v in targets.items()}, cfg, False)
    return fit_model(trainer.model, train_ds, val_ds, cfg, run_dir, int(frame.loc[train_rows, "copies"].sum()),
                     float(cfg.train.learning_rate), losses=soft_compile_args(cfg.model.heads))
