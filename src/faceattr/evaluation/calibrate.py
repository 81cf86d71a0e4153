"""``python src/main.py calibrate [--model-path DIR]``: fit a model's decision rules on its
validation split and store them in its ``model_info.json`` (``models.calibration``).

The validation faces go through the model as ``run`` serves it (``run.backend``, flip TTA per
``run.tta_flip``) with any earlier calibration switched off. The race offsets and the age map
are chosen there only; the test split stays unseen. ``calibration.json`` in the run folder
records every candidate with its validation figures, and the model's previous calibration.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from faceattr import writes
from faceattr.data.prepare import prepare_dataset
from faceattr.data.split_file import read_split
from faceattr.errors import ModelError
from faceattr.evaluation.served import ServedModel
from faceattr.inference.chips import align_training_photos
from faceattr.inference.predictor import Predictor
from faceattr.labels import RACES
from faceattr.models.calibration import Calibration, fit_age_map, fit_race_bias
from faceattr.models.info import ModelInfo, write_info
from faceattr.models.io import resolve_model_dir

log = logging.getLogger(__name__)


def validation_rows(cfg: Any, model_dir: Path, run_dir: Path) -> pd.DataFrame:
    """The model's validation faces (from its ``split.csv``) in the configured data."""
    split_csv = model_dir / "split.csv"
    if not split_csv.is_file():
        raise ModelError(f"{model_dir}: no split.csv, so its validation faces are unknown; cannot calibrate")
    names = set(read_split(model_dir, "val")["image"])  # checked: a damaged file is one line
    frame = prepare_dataset(cfg.data, cfg.rebalance, run_dir, aligner=align_training_photos).frame
    val = frame[frame["image"].isin(names)]
    if val.empty:
        raise ModelError(f"{model_dir}: none of its validation images were found in {cfg.data.path}")
    return val


def calibrate_model(cfg: Any, run_dir: Path) -> dict:
    """Fit, store and report the calibration of ``model_path`` (or the shipped model)."""
    model_dir = resolve_model_dir(cfg)
    info = ModelInfo.read(model_dir)
    val = validation_rows(cfg, model_dir, run_dir)
    predictor = Predictor.load(model_dir, cfg.paths.cache, batch_size=int(cfg.run.batch_size),
                               backend=str(cfg.run.backend))
    predictor.calibration = Calibration()  # fit on the raw outputs
    raw = ServedModel(predictor).predict(val, tta_flip=bool(cfg.run.tta_flip))
    # Each rule is fitted on the faces that carry its label: the race bias on every source's faces
    # with a race, the age map on exact ages (an age group can't say where inside it the age lies).
    race_true = val["race"].to_numpy(int)
    with_race = race_true >= 0
    age_true = val["age"].to_numpy(float)
    exact = ~np.isnan(age_true)
    if not with_race.any() or not exact.any():
        raise ModelError(f"{model_dir}: its validation faces need race labels and exact ages to calibrate "
                         f"({int(with_race.sum())} with a race, {int(exact.sum())} with an exact age)")
    # The accuracy may drop by at most calibrate.max_accuracy_drop within each training source.
    bias, tau, race_rows = fit_race_bias(np.asarray(raw["race"])[with_race], race_true[with_race],
                                         max_accuracy_drop=float(cfg.calibrate.max_accuracy_drop),
                                         groups=val["source"].to_numpy()[with_race])
    knots, share, age_rows = fit_age_map(np.asarray(raw["age"])[exact], age_true[exact],
                                         max_mae_increase=float(cfg.calibrate.max_mae_increase))
    calibration = Calibration(tuple(round(float(b), 5) for b in bias), knots)
    chosen_race = next(r for r in race_rows if r["tau"] == tau)
    chosen_age = next(r for r in age_rows if r["share"] == share)
    record = {"model_dir": str(model_dir), "validation_faces": len(val), "race_faces": int(with_race.sum()),
              "exact_age_faces": int(exact.sum()), "backend": predictor.backend,
              "previous": info.calibration, "calibration": calibration.to_dict(),
              "race": {"tau": tau, "candidates": race_rows}, "age": {"share": share, "candidates": age_rows}}
    writes.write_text(Path(run_dir) / "calibration.json", json.dumps(record, indent=2) + "\n")
    write_info(model_dir, replace(info, calibration=calibration.to_dict()))
    base_race, base_age = race_rows[0], age_rows[0]
    print(f"Race: tau {tau:g}; validation accuracy {base_race['accuracy']:.1%} -> {chosen_race['accuracy']:.1%}, "
          f"balanced {base_race['balanced_accuracy']:.1%} -> {chosen_race['balanced_accuracy']:.1%}, "
          f"{RACES[-1]} recall {base_race[f'recall_{len(RACES) - 1}']:.0%} -> "
          f"{chosen_race[f'recall_{len(RACES) - 1}']:.0%}")
    print(f"Age: map share {share:g}; validation MAE {base_age['mae']:.2f} -> {chosen_age['mae']:.2f} y, mean "
          f"absolute bias over 20 age bands {base_age['mean_abs_band_bias']:.2f} -> "
          f"{chosen_age['mean_abs_band_bias']:.2f} y")
    print(f"Calibration written to {model_dir / 'model_info.json'} (previous one kept in "
          f"{Path(run_dir) / 'calibration.json'})")
    return {"model_dir": str(model_dir), "tau": tau, "age_share": share}
