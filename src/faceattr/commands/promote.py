"""``python src/main.py promote RUN_DIR``: ship a trained model into ``saved_model/<type>``.

The work (copy, check it loads as ``run`` loads it, swap in, keep the old one) is
``training.promote.promote``; ``train promote=true`` and ``ensemble promote=true`` use it too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from faceattr.commands.spec import Command, usage_error
from faceattr.overrides import quote


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """``model_path=RUN_DIR``: exactly one folder."""
    if len(positional) != 1:
        raise usage_error("promote", "give exactly one training run folder")
    return [f"model_path={quote(positional[0])}"]


def handle(cfg: DictConfig, run_dir: Path) -> dict:
    """Promote ``model_path`` (a training run or its ``model/``); returns where it went."""
    from faceattr.models.io import model_folder  # deferred: models loads numpy and the family registry
    from faceattr.training.promote import promote_as_configured  # deferred: loads the model (TensorFlow/LiteRT)

    target = promote_as_configured(model_folder(Path(cfg.model_path)), cfg)
    return {"promoted": str(target)}


COMMAND = Command(
    name="promote",
    summary="copy a training run's model into saved_model/: promote RUN_DIR",
    handler=handle,
    to_overrides=to_overrides,
    positional=True,
    examples=(("promote outputs/train/DATE/TIME", "ship a run's model as saved_model/<model_type>"),),
)
