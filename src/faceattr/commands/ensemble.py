"""``python src/main.py ensemble DIR DIR [DIR ...]``: average trained models of one kind into one."""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from faceattr.commands.spec import Command, usage_error
from faceattr.errors import ConfigError
from faceattr.overrides import quote_list


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """``ensemble.members=[...]``: two or more folders."""
    if len(positional) < 2:
        raise usage_error("ensemble", "give two or more model folders (or training runs) of one kind, "
                                      "trained on one split")
    return [f"ensemble.members={quote_list(positional)}"]


def handle(cfg: DictConfig, run_dir: Path) -> dict:
    """Write ``<run dir>/model``, the members' mean (``models.ensemble.build_ensemble``), and
    promote it when ``promote=true``; returns the ensemble's summary."""
    from faceattr.models.ensemble import build_ensemble  # deferred: models loads numpy and pandas
    from faceattr.training.promote import promote_as_configured  # deferred: loads the model (TensorFlow/LiteRT)

    if cfg.promote and cfg.ensemble.get("view") is not None:  # refused before the build, not after
        raise ConfigError("ensemble.view builds a member's view for weigh, never shipped; leave out promote=true")
    summary = build_ensemble(cfg, run_dir)
    if cfg.promote:
        promote_as_configured(Path(summary["model_dir"]), cfg)
    return summary


COMMAND = Command(
    name="ensemble",
    summary="average trained models of one kind into one model: ensemble DIR DIR [DIR ...]",
    handler=handle,
    to_overrides=to_overrides,
    positional=True,
    examples=(("ensemble outputs/a outputs/b outputs/c hydra.run.dir=outputs/ens", "the mean of three runs"),),
)
