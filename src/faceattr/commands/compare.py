"""``python src/main.py compare DIR [DIR ...]``: summarise and plot a sweep or a set of runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from faceattr.commands.spec import Command, usage_error
from faceattr.overrides import quote_list


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """``compare.dirs=[...]``: the folders given, one or more."""
    if not positional:
        raise usage_error("compare", "give one or more sweep or run folders")
    return [f"compare.dirs={quote_list(positional)}"]


def handle(cfg: DictConfig, run_dir: Path) -> dict:
    """Summarise ``compare.dirs`` into ``run_dir`` (``evaluation.sweep.compare_runs``)."""
    from faceattr.evaluation.sweep import compare_runs  # deferred: the sweep summary loads pandas and Hydra

    return compare_runs(cfg, run_dir)


COMMAND = Command(
    name="compare",
    summary="summarise and plot a sweep or a set of runs: compare DIR [DIR ...]",
    handler=handle,
    to_overrides=to_overrides,
    positional=True,
    examples=(
        ("compare multirun/train/DATE/TIME", "one sweep: sweep_summary.csv and a plot"),
        ("compare outputs/train/DATE/T1 outputs/train/DATE/T2", "any runs side by side"),
    ),
)
