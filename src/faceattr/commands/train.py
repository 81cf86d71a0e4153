"""``python src/main.py train``: train a model, save it into the run folder, optionally evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from faceattr.commands.spec import Command, add_data_path, add_model_type, shared_overrides


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--model-type``, ``--data-path`` and ``--eval``."""
    add_model_type(parser)
    add_data_path(parser)
    parser.add_argument("--eval", action="store_true", help="evaluate on the test split after training")


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """``model=``, ``data.path=``, then ``train.eval=true`` for ``--eval``."""
    return shared_overrides(flags) + (["train.eval=true"] if flags.eval else [])


def handle(cfg: DictConfig, run_dir: Path) -> dict:
    """Train into ``run_dir`` (``training.command.train_run``: resumes, evaluates, promotes as set)."""
    from faceattr.training.command import train_run  # deferred: training imports TensorFlow (seconds)

    return train_run(cfg, run_dir)


COMMAND = Command(
    name="train",
    summary="train a model on UTKFace (add --eval to evaluate on the test split)",
    handler=handle,
    add_flags=add_flags,
    to_overrides=to_overrides,
    examples=(
        ("train --model-type normal --eval debug=smoke", "a quick real run on 300 faces"),
        ("train --data-path ~/data/UTKFace.tar.gz --eval", "FaceNet transfer on your UTKFace copy"),
        ("train experiment=facenet_full train.epochs=20", "a named run with one key changed"),
        ("train -m model.heads.dropout=0.2,0.4 debug=smoke", "a sweep: one run per value"),
    ),
)
