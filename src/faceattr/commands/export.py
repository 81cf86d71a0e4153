"""``python src/main.py export [MODEL_DIR]``: (re)write a model folder's TensorFlow Lite file."""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from faceattr.commands.spec import Command, add_model_type, shared_overrides, usage_error
from faceattr.overrides import quote


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--model-type`` (whose shipped model is exported when no folder is given)."""
    add_model_type(parser)


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """``model=``, then ``model_path=MODEL_DIR`` when a folder is given (at most one)."""
    out = shared_overrides(flags)
    if len(positional) > 1:
        raise usage_error("export", "give at most one model folder (default: the shipped model of --model-type)")
    if positional:
        out.append(f"model_path={quote(positional[0])}")
    return out


def handle(cfg: DictConfig, run_dir: Path) -> dict:
    """Export ``model_path`` (default: the shipped model of ``model.name``) with ``export.quantization``."""
    from faceattr.models.export import export_tflite  # deferred: the converter imports TensorFlow when it runs
    from faceattr.models.io import model_folder, resolve_model_dir  # deferred: models loads the family registry

    model_dir = model_folder(resolve_model_dir(cfg))
    target = export_tflite(model_dir, Path(cfg.paths.cache), str(cfg.export.quantization))
    print(f"Exported {target} ({cfg.export.quantization})")
    return {"exported": str(target), "quantization": str(cfg.export.quantization)}


COMMAND = Command(
    name="export",
    summary="write a model folder's TensorFlow Lite file, what `run` serves: export [MODEL_DIR]",
    handler=handle,
    add_flags=add_flags,
    to_overrides=to_overrides,
    positional=True,
    examples=(
        ("export", "rewrite the shipped FaceNet model's model.tflite"),
        ("export outputs/train/DATE/TIME/model export.quantization=float32", "an exact (float32) export"),
    ),
)
