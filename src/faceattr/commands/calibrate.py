"""``python src/main.py calibrate``: fit a model's decision rules on its validation split."""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from faceattr.commands.spec import Command, add_data_path, add_model_path, add_model_type, shared_overrides


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--model-type``, ``--model-path`` and ``--data-path``."""
    add_model_type(parser)
    add_model_path(parser)
    add_data_path(parser)


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """The shared flags' overrides."""
    return shared_overrides(flags)


def handle(cfg: DictConfig, run_dir: Path) -> dict:
    """Fit and store the calibration (``evaluation.calibrate.calibrate_model``)."""
    from faceattr.evaluation.calibrate import calibrate_model  # deferred: evaluation loads OpenCV and pandas

    return calibrate_model(cfg, run_dir)


COMMAND = Command(
    name="calibrate",
    summary="fit a model's decision rules (rare race class, age extremes) on its validation split",
    handler=handle,
    add_flags=add_flags,
    to_overrides=to_overrides,
    examples=(
        ("calibrate --model-type normal", "fit the shipped CNN's decision rules on its validation split"),
        ("calibrate --model-path outputs/train/DATE/TIME/model", "a model you trained"),
    ),
)
