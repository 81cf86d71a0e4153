"""The ``run`` command's work: label the faces in images (``run.img``) or a video (``run.video``).

``run_inputs`` checks which mode is asked for and hands off: images to
``inference.photos_batch.run_images`` (rows in a CSV/JSON file, annotated copies), video to
``inference.video.run_video`` (the capture loop and its inference worker). Where results may
be written is checked by ``inference.outputs`` before any work; whether a window can be shown,
by ``inference.display``. OpenCV's multi-line errors become one ``InputError`` line here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2

from faceattr.errors import ConfigError, FaceAttrError, InputError
from faceattr.inference.photos_batch import run_images
from faceattr.inference.video import run_video


def run_inputs(cfg: Any, run_dir: Path) -> dict:
    """Images mode (``run.img``) or video mode (``run.video``).

    Returns a summary dict (counts, where the results went). Raises ``InputError`` for a
    bad source or output, or when no input image could be read; ``ConfigError`` when both or
    neither mode is asked for.
    """
    has_img = bool(cfg.run.img)
    has_video = cfg.run.video is not None
    if has_img and has_video:
        raise ConfigError("run: give either run.img (--img) or run.video (--video), not both")
    if not has_img and not has_video:
        raise ConfigError("run: nothing to do; give --img PATH [PATH ...] or --video [SOURCE]")
    run_dir = Path(run_dir)
    try:
        return run_images(cfg, run_dir) if has_img else run_video(cfg, run_dir)
    except FaceAttrError:
        raise
    except cv2.error as exc:  # OpenCV's multi-line reports become one line
        raise InputError(f"OpenCV: {str(exc).strip().splitlines()[-1]}") from None
