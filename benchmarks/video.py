"""Section ``video``: frames/s of ``run --video`` on synthetic two- and four-face clips, measured
through the very function the command runs (``faceattr.inference.video.run_video``) and its
per-frame timing hook (``on_frame``), not a copy of its loop: with the default settings and with
the Haar cascade in the same run, every frame through the model (``run.sync``) or played at 30 fps
like a camera (the share of its frames the model keeps up with)."""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

from benchmarks.common import Row, photo_face, progress
from benchmarks.models import ModelEntry, backend_details, served_predictor

#: Top-left corners of the 220 px face patches in a 640x480 frame, by number of faces.
CLIP_LAYOUTS: dict[int, tuple[tuple[int, int], ...]] = {
    2: ((60, 130), (360, 130)),
    4: ((60, 15), (360, 15), (60, 245), (360, 245)),
}


def make_clip(path: Path, frames: int, fps: float = 30.0, faces: int = 2) -> Path:
    """A 640x480 clip: ``faces`` (2 or 4, ``CLIP_LAYOUTS``) copies of the example face, each on a
    220 px patch (the face about 90 px wide, a webcam head shot), drifting a few pixels."""
    import cv2
    import numpy as np

    image, det = photo_face()
    cx, cy = det.x + det.w // 2, det.y + det.h // 2
    half = int(round(det.w * 1.25))  # the face fills ~40% of the patch, like a webcam head shot
    padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_REPLICATE)
    patch = padded[cy : cy + 2 * half, cx : cx + 2 * half]
    side = 220
    patch = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write mp4v video")
    try:
        for i in range(frames):
            canvas = np.full((480, 640, 3), 96, np.uint8)
            phase = 2 * math.pi * i / 45.0
            for k, (x0, y0) in enumerate(CLIP_LAYOUTS[faces]):
                sign = 1 if k % 2 == 0 else -1
                x = x0 + int(round(8 * math.sin(phase) * sign))
                y = y0 + int(round(5 * math.cos(phase)))
                canvas[y : y + side, x : x + side] = patch
            writer.write(canvas)
    finally:
        writer.release()
    return path


def _quoted(path: Path) -> str:
    """A path as a quoted Hydra override value."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def video_config(clip: Path, out_path: Path, tta_flip: bool, refresh_every: int | None = None,
                 detector: str | None = None, sync: bool = True):
    """The config ``python src/main.py run --video CLIP --output OUT run.sync=true
    run.display=false`` composes (``run.video_tta_flip`` and ``run.tracker.refresh_every`` as
    given; ``detector``: a ``conf/detector`` choice instead of the default; ``sync=False``: the
    file is played at its frame rate, as a camera delivers it)."""
    from faceattr.config import compose_config

    overrides = ["command=run", f"run.video={_quoted(clip)}", f"run.output={_quoted(out_path)}",
                 f"run.sync={str(bool(sync)).lower()}", "run.display=false",
                 f"run.video_tta_flip={str(bool(tta_flip)).lower()}"]
    if refresh_every is not None:
        overrides.append(f"run.tracker.refresh_every={int(refresh_every)}")
    if detector is not None:
        overrides.append(f"detector={detector}")
    return compose_config(overrides)


def measure_video(entry: ModelEntry, clip: Path, out_dir: Path, tta_flip: bool,
                  refresh_every: int | None = None, detector: str | None = None, metric: str | None = None,
                  sync: bool = True) -> Row:
    """Frames/s of ``run --video`` with ``run.sync=true`` (every frame through detection, the
    model and the tracker, drawn and written to an mp4) and no display: ``run_video`` itself,
    with the default detector's video settings (or ``detector``'s, a ``conf/detector`` choice),
    ``run.tracker``, ``run.max_faces`` and ``run.batch_size`` as ``run`` composes them and the
    runner ``run`` serves; ``tta_flip`` is ``run.video_tta_flip``. ``refresh_every`` overrides
    ``run.tracker.refresh_every`` (1: every face of every frame through the model); the row is
    then ``video_fps_refresh<k>`` unless ``metric`` names it. ``details`` splits the time per
    frame by stage, from the ``FrameStats`` the loop hands its ``on_frame`` hook.

    ``sync=False``: the clip is played at its frame rate (30 fps) as a camera delivers it, the
    model taking the newest frame whenever it is free; ``details.kept_share`` is the share of
    the frames read that went through the model (1.0: it kept up with every frame).
    """
    from faceattr.inference.pipeline import FacePipeline
    from faceattr.inference.video import FrameStats, run_video

    metric = metric or ("video_fps" if refresh_every is None else f"video_fps_refresh{int(refresh_every)}")
    out_path = out_dir / f"annotated_{entry.name}_{metric}.mp4"
    cfg = video_config(clip, out_path, tta_flip, refresh_every, detector, sync)
    pipeline = FacePipeline.from_config(cfg, predictor=served_predictor(entry, int(cfg.run.batch_size),
                                                                        bool(cfg.run.tta_flip)), video=True)
    refresh = int(cfg.run.tracker.refresh_every)
    progress(f"{entry.name}: video pipeline on {clip.name} ({pipeline.detector.name}, video_tta_flip={tta_flip}, "
             f"refresh_every={refresh}{'' if sync else ', played at its frame rate'})")
    frames: list[FrameStats] = []
    with contextlib.redirect_stdout(sys.stderr):  # run's summary line joins the progress lines
        result = run_video(cfg, out_dir, pipeline, on_frame=frames.append)
    if not frames or len(frames) != result["frames_read"]:
        raise RuntimeError(f"the frame hook saw {len(frames)} of {result['frames_read']} frames")
    read, last = result["frames_read"], frames[-1]
    stages = last.stages
    seconds = read / result["fps"] if result["fps"] > 0 else last.elapsed_s

    processed = max(stages.frames, 1)  # = read with run.sync

    def per_frame_ms(s: float) -> float:
        return round(s * 1000 / processed, 2)

    width, height = clip_size(clip)
    value = round(result["fps"], 2) if sync else round(result["frames_processed"] / max(read, 1), 4)
    return Row(metric, entry.name, value, "frames/s" if sync else "share", details={
        "frames": read, "resolution": f"{width}x{height}", "seconds": round(seconds, 3), "sync": sync,
        "detector": pipeline.detector.name, "detector_scale_factor": getattr(pipeline.detector, "scale_factor", None),
        "refresh_every": refresh, **backend_details(entry, entry.served),
        "video_tta_flip": tta_flip, "faces_per_frame": round(stages.faces / processed, 2),
        "model_faces_per_frame": round(stages.predicted / processed, 2),
        "model_calls_per_frame": round(stages.model_calls / processed, 2),
        "aligned_share": round(stages.aligned / stages.predicted, 4) if stages.predicted else None,
        "kept_share": round(result["frames_processed"] / max(read, 1), 4),
        "detect_ms_per_frame": per_frame_ms(stages.detect_s),
        "crop_ms_per_frame": per_frame_ms(stages.crop_s),
        "predict_ms_per_frame": per_frame_ms(stages.predict_s),
        # Decoding, tracking, drawing and writing: the rest of a frame's time, where every frame
        # goes through the model (played like a camera, the capture loop runs beside the model).
        "other_ms_per_frame": per_frame_ms(seconds - stages.detect_s - stages.crop_s - stages.predict_s)
        if sync else None,
        "worker_fps": round(result["model_fps"], 2), "frames_processed": result["frames_processed"],
        "frames_written": result["frames_written"], "function": "faceattr.inference.video.run_video"})


def clip_size(clip: Path) -> tuple[int, int]:
    """(width, height) in pixels of a video file."""
    import cv2

    cap = cv2.VideoCapture(str(clip))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
