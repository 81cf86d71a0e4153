"""``python src/main.py stats``: prepare the configured data and write its statistics."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from faceattr.commands.spec import Command, add_data_path, shared_overrides


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--data-path``."""
    add_data_path(parser)


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """``data.path=`` for ``--data-path``."""
    return shared_overrides(flags)


def handle(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Prepare the data (as ``train`` does) and write plots and ``data_summary.json`` under
    ``<run dir>/statistics``; returns the summary."""
    from faceattr.data.prepare import prepare_dataset  # deferred: data loads OpenCV and pandas
    from faceattr.data.stats import write_statistics  # deferred: matplotlib takes seconds to import
    from faceattr.inference.chips import align_training_photos  # deferred: inference loads OpenCV

    run_dir = Path(run_dir)
    prepared = prepare_dataset(cfg.data, cfg.rebalance, run_dir, aligner=align_training_photos)
    return write_statistics(prepared, run_dir / "statistics", formats=tuple(cfg.evaluation.formats),
                            dpi=int(cfg.evaluation.dpi))


COMMAND = Command(
    name="stats",
    summary="write dataset statistics (plots and data_summary.json)",
    handler=handle,
    add_flags=add_flags,
    to_overrides=to_overrides,
    examples=(
        ("stats", "statistics of the configured dataset (data.path)"),
        ("stats --data-path ~/data/UTKFace", "of another copy"),
    ),
)
