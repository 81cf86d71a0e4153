"""``python src/main.py run``: label the faces in images (``--img``) or a video or camera (``--video``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from faceattr.commands.spec import Command, add_model_path, add_model_type, shared_overrides, usage_error
from faceattr.overrides import quote, quote_list


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--model-type``, ``--model-path``, one of ``--img``/``--video``, and the output flags."""
    add_model_type(parser)
    add_model_path(parser)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--img", nargs="+", metavar="PATH", help="image files, folders or globs")
    src.add_argument("--video", nargs="?", const="0", metavar="SOURCE", help="camera index (default 0) or video file")
    parser.add_argument("--output", help="preds.csv|preds.json for --img, out.mp4 for --video")
    parser.add_argument("--no-display", action="store_true", help="never open a window")
    parser.add_argument("--no-annotate", action="store_true",
                        help="write only the predictions, no annotated copies of the images")
    parser.add_argument("--save-faces", action="store_true",
                        help="--img: also write each face as the model saw it (aligned, at its input size) "
                             "to <run dir>/faces/ (run.faces_dir=...)")


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """``run.img=[...]`` or ``run.video=...``, then ``run.output``, ``run.display``, ``run.annotate``,
    ``run.save_faces``; one of ``--img`` and ``--video`` is required."""
    out = shared_overrides(flags)
    if flags.img is None and flags.video is None:
        raise usage_error("run", "give --img PATH [PATH ...] or --video [SOURCE]")
    if flags.img is not None:
        out.append(f"run.img={quote_list(flags.img)}")
    if flags.video is not None:
        out.append(f"run.video={quote(flags.video)}")
    if flags.output:
        out.append(f"run.output={quote(flags.output)}")
    if flags.no_display:
        out.append("run.display=false")
    if flags.no_annotate:
        out.append("run.annotate=false")
    if flags.save_faces:
        if flags.video is not None:
            raise usage_error("run", "--save-faces goes with --img (a video's faces are not written one by one)")
        out.append("run.save_faces=true")
    return out


def handle(cfg: DictConfig, run_dir: Path) -> dict:
    """Label ``run.img`` or ``run.video`` (``inference.run.run_inputs``); returns its summary."""
    from faceattr.inference.run import run_inputs  # deferred: inference loads OpenCV; --help reads this module

    return run_inputs(cfg, run_dir)


COMMAND = Command(
    name="run",
    summary="label the faces in images (--img) or a video/camera (--video)",
    handler=handle,
    add_flags=add_flags,
    to_overrides=to_overrides,
    examples=(
        ("run --img photo.jpg", "label every face in one photo"),
        ('run --img photos/ "shots/*.png" --output preds.json --no-annotate', "folders and globs, JSON out"),
        ("run --img me.jpg --model-type normal --save-faces", "the CNN; also each face as the model saw it"),
        ("run --video clip.mp4 --no-display --output out.mp4", "a video file, annotated copy written"),
        ("run --video", "camera 0, in a window (q quits)"),
    ),
)
