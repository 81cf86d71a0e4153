"""``python src/main.py evaluate``: score a saved model on its test split or on labelled photos."""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from faceattr.commands.spec import Command, add_data_path, add_model_path, add_model_type, shared_overrides
from faceattr.overrides import quote


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--model-type``, ``--model-path``, ``--data-path`` and ``--labels``."""
    add_model_type(parser)
    add_model_path(parser)
    add_data_path(parser)
    parser.add_argument("--labels", metavar="PATH",
                        help="a labelled photo folder (with labels.csv) or its CSV: score the model on those photos "
                             "as `run` sees them (evaluation.labels=...)")


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """The shared flags, then ``evaluation.labels=`` for ``--labels``."""
    return shared_overrides(flags) + ([f"evaluation.labels={quote(flags.labels)}"] if flags.labels else [])


def handle(cfg: DictConfig, run_dir: Path) -> dict:
    """Evaluate the chosen model (``evaluation.model_dir.evaluate_model``); returns its metrics."""
    from faceattr.evaluation.model_dir import evaluate_model  # deferred: evaluation loads OpenCV and matplotlib

    return evaluate_model(cfg, run_dir)


COMMAND = Command(
    name="evaluate",
    summary="evaluate a saved model on the test split",
    handler=handle,
    add_flags=add_flags,
    to_overrides=to_overrides,
    examples=(
        ("evaluate", "the shipped FaceNet model on its test split"),
        ("evaluate --model-type normal evaluation.split=val", "the shipped CNN on its validation split"),
        ("evaluate --labels my_photos/", "your own labelled photos (a folder with labels.csv)"),
        ("evaluate --model-path outputs/train/DATE/TIME/model", "a model you trained"),
    ),
)
