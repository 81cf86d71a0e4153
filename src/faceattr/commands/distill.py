"""``python src/main.py distill``: train a student model on a teacher's outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from faceattr.commands.spec import Command, add_model_type, shared_overrides
from faceattr.overrides import quote


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--model-type`` (the student's family, default normal) and ``--teacher``."""
    add_model_type(parser, help="the student's model family (model=...; default normal, one CNN)", default="normal")
    parser.add_argument("--teacher", metavar="DIR",
                        help="the teacher's model folder, with its split.csv (distill.teacher=...)")


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """``model=`` (always: its default is normal), then ``distill.teacher=`` for ``--teacher``."""
    return shared_overrides(flags) + ([f"distill.teacher={quote(flags.teacher)}"] if flags.teacher else [])


def handle(cfg: DictConfig, run_dir: Path) -> dict:
    """Train the student into ``<run dir>/model`` and report it beside its teacher
    (``distill.command.distill_run``)."""
    from faceattr.distill.command import distill_run  # deferred: distillation imports TensorFlow (seconds)

    return distill_run(cfg, run_dir)


COMMAND = Command(
    name="distill",
    summary="train a student model (default: one CNN) on a teacher's outputs: distill [--teacher DIR]",
    handler=handle,
    add_flags=add_flags,
    to_overrides=to_overrides,
    examples=(
        ("distill", "the shipped FaceNet model -> one CNN"),
        ("distill distill.unlabeled=[my_photos/,clip.mp4] distill.alpha=0.7", "with unlabelled photos"),
    ),
)
