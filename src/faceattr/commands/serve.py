"""``python src/main.py serve``: the local web app (upload photos, correct labels, retrain, browse runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig

from faceattr.commands.spec import Command, add_model_path, add_model_type, shared_overrides


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--model-type`` and ``--model-path``: the model the page serves."""
    add_model_type(parser)
    add_model_path(parser)


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """The shared flags' overrides."""
    return shared_overrides(flags)


def handle(cfg: DictConfig, run_dir: Path) -> NoReturn:
    """Serve until Ctrl-C or another signal (``serve.app.run_server``), which ends as ``KeyboardInterrupt``."""
    from faceattr.serve.app import run_server  # deferred: the web app loads FastAPI and OpenCV

    run_server(cfg)


COMMAND = Command(
    name="serve",
    summary="a local web app: upload photos, correct labels, retrain; browse runs (serve.host, serve.port)",
    handler=handle,
    add_flags=add_flags,
    to_overrides=to_overrides,
    examples=(
        ("serve", "the web page on http://127.0.0.1:8000/ (shipped FaceNet model)"),
        ("serve --model-type normal serve.port=8080", "the CNN, another port"),
    ),
)
