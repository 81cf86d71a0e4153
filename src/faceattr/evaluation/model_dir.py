"""The ``evaluate`` command's work (``evaluate_model``), and scoring a model on a split of
UTKFace-style data (``evaluate``, ``train --eval``).

``evaluate_split`` predicts the rows of one split with any scorer (a family's trainer holding
the Keras model, or :class:`~faceattr.evaluation.served.ServedModel` for the exported file) and
writes the full report (``evaluation.report.write_evaluation``). ``evaluate_model_dir`` does so
for a saved model folder on the split saved with it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from faceattr.config import model_settings
from faceattr.data.prepare import prepare_dataset
from faceattr.data.split_file import read_split
from faceattr.errors import ModelError
from faceattr.evaluation.photos import evaluate_photos
from faceattr.evaluation.plots import plot_training_curves
from faceattr.evaluation.served import ServedModel
from faceattr.evaluation.sources import write_split_evaluation
from faceattr.inference.chips import align_training_photos
from faceattr.inference.predictor import Predictor
from faceattr.models.calibration import Calibration
from faceattr.models.ensemble import MEMBER_HISTORY_PREFIX
from faceattr.models.families import family
from faceattr.models.info import ModelInfo
from faceattr.models.io import history_of, load_trainable, resolve_model_dir
from faceattr.models.predictions import Predictions

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """What predicts a split: ``predict(frame, tta_flip)`` -> ``Predictions`` row-aligned with ``frame``."""

    def predict(self, frame: pd.DataFrame, tta_flip: bool) -> Predictions: ...


def evaluate_split(scorer: Scorer, scored: pd.DataFrame, cfg: DictConfig, out_dir: Path,
                   history_csv: Path | None, split: str = "test", calibration: Calibration | None = None) -> dict:
    """Predict ``scored`` (the rows of ``split``) with ``scorer`` (then ``calibration``, the
    model's decision rules, when given) and write the full evaluation into ``out_dir``, each
    training source's figures apart when the split spans several (``evaluation.sources``)."""
    start = time.perf_counter()
    predictions = scorer.predict(scored, tta_flip=bool(cfg.train.tta_flip))
    if calibration is not None:
        predictions = calibration.apply(predictions)
    log.info("predicted %d %s faces in %.1f s", len(scored), split, time.perf_counter() - start)
    return write_split_evaluation(out_dir, scored, predictions, cfg.evaluation, list(cfg.data.age_bin_edges),
                                  history_csv, split)


def rows_to_score(frame: pd.DataFrame, saved: pd.DataFrame | None, split: str, model_dir: Path,
                  data_path: str) -> pd.DataFrame:
    """The rows of ``frame`` (the current data, from ``data_path``) that score the model of
    ``model_dir`` on ``split``: its saved split's images (``saved``: its ``split.csv``), plus the
    ``split`` rows of any source it never trained on; without ``saved``, the current data's split.
    ``ModelError`` when none is found."""
    if saved is not None:
        split_names = set(saved.loc[saved["split"] == split, "image"])
        scored = frame[frame["image"].isin(split_names)]
        if len(scored) < len(split_names):
            log.warning("%d of the model's %d %s images are not in %s", len(split_names) - len(scored),
                        len(split_names), split, data_path)
        # A source the model never trained on (none of its faces is in the model's split.csv, e.g.
        # FairFace for a UTKFace model) is scored on its own split of the current data: unseen faces.
        known = frame["image"].isin(set(saved["image"]))
        unseen = sorted(set(frame["source"]) - set(frame.loc[known, "source"]))
        if unseen:
            scored = pd.concat([scored, frame[frame["source"].isin(unseen) & (frame.split == split)]])
            log.info("%s: not in %s (the model never trained on it); scored on its %s split", ", ".join(unseen),
                     model_dir / "split.csv", split)
    else:
        log.warning("%s has no split.csv: using the split of the current data config", model_dir)
        scored = frame[frame.split == split]
    if scored.empty:
        raise ModelError(f"{model_dir}: none of its {split} images were found in {data_path}")
    return scored


def evaluate_model_dir(cfg: DictConfig, model_dir: Path, run_dir: Path) -> dict:
    """Evaluate a saved model on its test split (``evaluate``); writes the reports into ``run_dir``.

    The test images are those of the ``split.csv`` saved with the model, so an evaluation
    can't drift onto training images if the data config or seed changed since.
    ``evaluation.split=val`` scores the validation split instead, to choose between models
    (e.g. a single model or an ensemble) while the test split stays unseen.
    """
    split = str(cfg.evaluation.split)  # test | val (faceattr.config checked it)
    model_dir = Path(model_dir)
    info = ModelInfo.read(model_dir)
    stored = (info.trained_with or {}).get("model")  # the settings it was trained with, filled from the schema
    model_cfg = model_settings(stored) if stored else cfg.model
    if model_cfg.name != info.model_type:
        raise ModelError(f"{model_dir}: model_info says {info.model_type} but its config says {model_cfg.name}")
    eval_cfg = cfg.copy()
    with open_dict(eval_cfg):
        eval_cfg.model = model_cfg  # the saved model's own settings, whatever --model-type says
    split_csv = model_dir / "split.csv"
    # Checked before the data is touched: a damaged file is one line.
    saved = read_split(model_dir) if split_csv.is_file() else None
    prepared = prepare_dataset(cfg.data, cfg.rebalance, run_dir, aligner=align_training_photos)
    frame = prepared.frame
    scored = rows_to_score(frame, saved, split, model_dir, str(cfg.data.path))
    log.info("evaluating on the %s split: %d images", split, len(scored))
    backend = str(cfg.evaluation.backend)
    # The model's decision rules (models.calibration), as `run` applies them; run.calibrate=false: raw outputs.
    calibration = Calibration.from_dict(info.calibration if cfg.run.calibrate else None)
    scorer: Scorer
    if backend == "keras":  # the family's trainer holding the saved Keras model (cached features and all)
        scorer = family(info.model_type).trainer(eval_cfg, load_trainable(model_dir, info))
    else:  # what `run` serves: the images through the exported file, not the cached features
        predictor = Predictor.load(model_dir, cfg.paths.cache, backend=backend)
        predictor.calibration = Calibration()  # applied below, as for Keras
        scorer = ServedModel(predictor)
    history = history_of(model_dir)
    metrics = evaluate_split(scorer, scored, eval_cfg, run_dir, history, split, calibration)
    # A model evaluated into this folder before may have had other members: their curves would
    # sit beside this model's as if they were its own (statistics/ is rewritten so).
    for stale in run_dir.glob("training_curves_member*"):
        stale.unlink()
    if history is None and cfg.evaluation.plots:  # an ensemble: curves per member (training_curves_member<i>)
        for member in sorted(model_dir.glob(f"{MEMBER_HISTORY_PREFIX}*.csv")):
            plot_training_curves(member, run_dir / f"training_curves_{member.stem.removeprefix('history_')}",
                                 [str(f) for f in cfg.evaluation.formats], int(cfg.evaluation.dpi))
    return metrics


def evaluate_model(cfg: DictConfig, run_dir: Path) -> dict:
    """Evaluate the chosen model on its test split, or with
    ``evaluation.labels`` (``--labels PATH``) on a labelled photo folder (``evaluation.photos``).

    The model folder is ``cfg.model_path`` or the shipped model of ``cfg.model.name``; the
    reports land in ``run_dir``. Returns the test metrics.
    """
    if OmegaConf.select(cfg, "evaluation.labels"):  # real photos, through run's face pipeline
        return evaluate_photos(cfg, run_dir)
    model_dir = resolve_model_dir(cfg)
    log.info("evaluating %s", model_dir)
    return evaluate_model_dir(cfg, model_dir, run_dir)
