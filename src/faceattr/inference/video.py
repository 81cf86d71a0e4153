"""``run --video``: label the faces in a camera's frames or a video file.

A capture loop reads, draws and writes every frame and never waits for the model; a worker
thread (``InferenceWorker``) runs detection, the model and the tracker (``TrackingProcess``)
on the newest frame it is handed (a one-slot queue: older frames are dropped from inference,
not from the output), and the loop draws the latest tracked labels. So ``--output out.mp4``
has exactly the input's frames. A video file is read at its own frame rate, as a camera would
deliver it. ``run.sync=true`` instead puts every frame of a file through the model before it
is written (offline analysis: exact boxes on every frame, as fast as the model allows).

Passes per face: a face goes through the model when its track is new and then every
``run.tracker.refresh_every`` frames, once (no mirror image: ``run.video_tta_flip``, off by
default; the tracker's average over many frames smooths more than the flip would), with all the
faces of a frame due one in one batch. A frame with more than ``run.max_faces`` faces has its
largest ones tracked and labelled; the rest are counted (``StageTotals.skipped``) and the log
says so once.

Timing: ``run_video(..., on_frame=hook)`` calls ``hook(FrameStats)`` once per frame read, after
the frame is written, with the loop's counters and the model side's cumulative stage times
(``StageTotals``: detection, cropping, prediction). ``benchmarks/`` measures ``run --video``
through this hook, so the figures are those of the very loop ``run`` uses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceattr import writes
from faceattr.errors import ConfigError, InputError
from faceattr.inference.annotate import BOX_COLOUR, MISSED_COLOUR, draw_face, draw_fps, format_label
from faceattr.inference.display import QUIT_KEYS, close_windows, show, want_display
from faceattr.inference.outputs import counted, output_path
from faceattr.inference.pipeline import FacePipeline
from faceattr.inference.predictor import FacePrediction
from faceattr.inference.tracking import IoUTracker

log = logging.getLogger(__name__)

#: Video container -> FourCC. mp4v ships with every OpenCV wheel (H.264 often doesn't).
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}


@dataclass(frozen=True)
class TrackView:
    """What the drawing loop needs of one track (an immutable snapshot). ``box``: (x, y, w, h)
    pixels; ``missed``: model updates since the face was last detected (0: detected now)."""

    track_id: int
    box: tuple[int, int, int, int]
    prediction: FacePrediction | None
    missed: int


@dataclass(frozen=True)
class StageTotals:
    """The model side's work so far, summed over the frames it processed.

    ``frames``: frames processed; ``detect_s`` / ``crop_s`` / ``predict_s``: seconds in the
    detector, in cropping/aligning, and in ``FacePipeline.predict`` (the model with its
    preprocessing, and the flip when ``run.video_tta_flip``); ``faces``: faces detected and kept
    (at most ``run.max_faces`` a frame); ``predicted``: faces that went through the model (new
    tracks and those due a refresh, ``run.tracker.refresh_every``); ``model_calls``: frames whose
    due faces went through the model (one batch each); ``aligned``: predicted faces aligned onto
    the chip template by their landmarks; ``skipped``: faces beyond ``run.max_faces``, left out.
    """

    frames: int = 0
    detect_s: float = 0.0
    crop_s: float = 0.0
    predict_s: float = 0.0
    faces: int = 0
    predicted: int = 0
    model_calls: int = 0
    aligned: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class FrameStats:
    """What the ``on_frame`` hook of ``run_video`` gets, once per frame read.

    ``frame``: this frame's number (1-based); ``written``: frames written so far;
    ``elapsed_s``: seconds since the loop started; ``loop_fps``: the smoothed frame rate
    drawn on the frame; ``model_frames`` / ``model_fps``: frames the model processed so far
    and its rate over its own working time; ``stages``: the model side's cumulative stage
    times (with ``run.sync=true``, up to and including this frame); ``tracks``: the tracks
    drawn on this frame.
    """

    frame: int
    written: int
    elapsed_s: float
    loop_fps: float
    model_frames: int
    model_fps: float
    stages: StageTotals
    tracks: tuple[TrackView, ...]


FrameHook = Callable[[FrameStats], None]


class TrackingProcess:
    """One frame through the face pipeline and the tracker: ``process(frame) -> [TrackView]``.

    ``frame``: (H, W, 3) BGR, of any size (a stream may change it). Only new faces and tracks
    due a refresh go through the model (``run.tracker.refresh_every``), all of them in one batch,
    with the mirror image too only when ``tta_flip``. Of more than ``max_faces`` detections the
    largest are kept; the others are counted in ``totals.skipped`` and said once in the log.
    ``totals`` (``StageTotals``) is replaced after each frame, so a reader on another thread
    always sees a consistent snapshot.
    """

    def __init__(self, pipeline: FacePipeline, tracker: IoUTracker, max_faces: int | None = None,
                 tta_flip: bool = False) -> None:
        self.pipeline = pipeline
        self.tracker = tracker
        self.max_faces = int(max_faces) if max_faces else None
        self.tta_flip = bool(tta_flip)
        self.totals = StageTotals()

    def _keep_largest(self, detections: list) -> tuple[list, int]:
        """At most ``max_faces`` detections, the largest boxes, in their original order; and how
        many were left out."""
        if self.max_faces is None or len(detections) <= self.max_faces:
            return detections, 0
        if self.totals.skipped == 0:
            log.warning("A frame holds %d faces: the %d largest are labelled (run.max_faces), the others "
                        "skipped and counted in the summary; said once", len(detections), self.max_faces)
        largest = sorted(range(len(detections)), key=lambda i: -detections[i].w * detections[i].h)[:self.max_faces]
        return [detections[i] for i in sorted(largest)], len(detections) - self.max_faces

    def __call__(self, frame: np.ndarray) -> list[TrackView]:
        t0 = time.perf_counter()
        detections, skipped = self._keep_largest(self.pipeline.detector.detect(frame))
        t1 = time.perf_counter()
        need = self.tracker.needs_prediction(detections)
        due = [d for d, n in zip(detections, need, strict=True) if n]
        crops = self.pipeline.crop(frame, due)
        t2 = time.perf_counter()
        fresh = iter(self.pipeline.predict(crops, tta_flip=self.tta_flip))
        t3 = time.perf_counter()
        tracks = self.tracker.update(detections, [next(fresh) if n else None for n in need])
        s = self.totals
        self.totals = StageTotals(s.frames + 1, s.detect_s + (t1 - t0), s.crop_s + (t2 - t1),
                                  s.predict_s + (t3 - t2), s.faces + len(detections), s.predicted + len(due),
                                  s.model_calls + bool(due), s.aligned + sum(c.aligned for c in crops),
                                  s.skipped + skipped)
        return [TrackView(t.track_id, t.box, t.prediction, t.missed) for t in tracks]


def tracking_process(pipeline: FacePipeline, tracker: IoUTracker, max_faces: int | None = None,
                     tta_flip: bool = False) -> TrackingProcess:
    """The per-frame work of ``run --video``'s worker (see ``TrackingProcess``)."""
    return TrackingProcess(pipeline, tracker, max_faces, tta_flip)


class InferenceWorker:
    """Runs ``process(frame) -> [TrackView]`` on the newest submitted frame.

    Threaded (default): ``submit`` never blocks; the one-slot queue keeps only the newest
    frame, so the model always works on what is current and the capture loop never waits for
    it. ``latest`` is the snapshot of the last processed frame, replaced atomically and read
    without a lock. ``threaded=False``: ``submit`` processes the frame before returning
    (offline analysis of a file, every frame through the model).
    """

    def __init__(self, process: Callable[[np.ndarray], list[TrackView]], threaded: bool = True) -> None:
        self._process = process
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=1)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="faceattr-inference", daemon=True) if threaded else None
        self.latest: list[TrackView] = []
        self.processed = 0
        self.busy_s = 0.0
        self.error: BaseException | None = None

    def start(self) -> None:
        """Start the thread (nothing to do when not threaded)."""
        if self._thread is not None:
            self._thread.start()

    def submit(self, frame: np.ndarray) -> None:
        """Hand over an (H, W, 3) BGR frame the worker may keep (pass a copy)."""
        if self._thread is None:
            self._step(frame)
            return
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()  # drop the stale frame: inference should see the newest
            with contextlib.suppress(queue.Full):  # the worker can't refill it, but be safe
                self._queue.put_nowait(frame)

    def _step(self, frame: np.ndarray) -> None:
        t0 = time.perf_counter()
        try:
            self.latest = self._process(frame)
        except BaseException as exc:  # handed to the capture loop, which stops and re-raises
            self.error = exc
            self._halt.set()
            return
        self.busy_s += time.perf_counter() - t0
        self.processed += 1

    def _loop(self) -> None:
        while not self._halt.is_set():
            try:
                frame = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            self._step(frame)

    def stop(self) -> None:
        """Finish the frame in hand, then end the thread and wait for it."""
        self._halt.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()

    @property
    def fps(self) -> float:
        """Frames the model processed per second of its own working time."""
        return self.processed / self.busy_s if self.busy_s > 0 else 0.0


def draw_tracks(frame: np.ndarray, tracks: Sequence[TrackView]) -> np.ndarray:
    """A copy of the frame with each track's box and smoothed label (amber while missed)."""
    out = frame.copy()
    for t in tracks:
        draw_face(out, t.box, f"#{t.track_id} {format_label(t.prediction)}", MISSED_COLOUR if t.missed else BOX_COLOUR)
    return out


def open_source(source: str) -> tuple[cv2.VideoCapture, str, bool]:
    """Open a camera index (digits), a stream URL or a file; one-line InputError otherwise.

    Returns (capture, name for messages, is_camera)."""
    is_camera = source.isdigit()
    name = f"camera {source}" if is_camera else source
    if not is_camera and "://" not in source:
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"{source}: no such video file")
        if path.is_dir():
            raise InputError(f"{source}: is a folder, not a video")
        source = str(path)
    # OpenCV logs each back end's failure over many stderr lines; the InputError below says it once.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        cap = cv2.VideoCapture(int(source) if is_camera else source)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not cap.isOpened():
        cap.release()
        raise InputError(f"{name}: cannot be opened" + ("" if is_camera else " as a video"))
    return cap, name, is_camera


def video_output_path(cfg: Any, run_dir: Path, source: str) -> Path | None:
    """Where ``run.output`` writes the annotated video (None: not written); ``InputError`` when
    it exists (unless ``run.overwrite``) or is the input video itself."""
    if not cfg.run.output:
        return None
    out_path = output_path(cfg.run.output, run_dir / "annotated.mp4", tuple(VIDEO_CODECS), bool(cfg.run.overwrite),
                           "video")
    if not source.isdigit() and Path(source).exists() and out_path.resolve() == Path(source).resolve():
        raise InputError(f"{out_path}: the output would overwrite the input video")
    return out_path


def first_frame(cap: cv2.VideoCapture, name: str, is_camera: bool) -> np.ndarray:
    """The source's first frame, (H, W, 3) BGR; ``InputError`` (the capture released) when it has none."""
    ok, frame = cap.read()
    if not ok or frame is None:
        cap.release()
        raise InputError(f"{name}: cannot be opened" + (" (no frames)" if is_camera else " as a video (no frames)"))
    return frame


def frame_rate(cap: cv2.VideoCapture, name: str) -> tuple[float, int]:
    """(frames per second, frames a file's header announces: 0 or -1 for a camera); 30 fps when
    the source reports a rate outside 0.5 to 1000 (cameras often report 0)."""
    fps_in = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    frames_announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if not 0.5 <= fps_in <= 1000.0:
        log.info("%s reports %.3g fps; using 30", name, fps_in)
        fps_in = 30.0
    return fps_in, frames_announced


class VideoOutput:
    """The annotated video, written at ``fps`` frames/s and ``size`` (width, height) pixels.

    It is written beside ``path`` under a temporary name (same suffix: it picks the container)
    and renamed into place by :meth:`close` once finalised, so ``path`` is never a file without
    its index. ``path`` None: nothing is written. ``InputError`` when the codec can't write it.
    """

    def __init__(self, path: Path | None, fps: float, size: tuple[int, int]) -> None:
        self.path = path
        self.size = size
        self.written = 0
        self.partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}") if path else None
        self.writer: cv2.VideoWriter | None = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        codec = VIDEO_CODECS[path.suffix.lower()]
        self.writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*codec), fps, size)
        if not self.writer.isOpened():
            self.partial.unlink(missing_ok=True)
            raise InputError(f"{path}: cannot be written as a video (codec {codec} unavailable)")

    def write(self, drawn: np.ndarray) -> None:
        """Append a frame (resized to the video's size when the stream changed its own)."""
        if self.writer is None:
            return
        if drawn.shape[:2] != (self.size[1], self.size[0]):
            drawn = cv2.resize(drawn, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(drawn)
        self.written += 1

    def close(self) -> None:
        """Finalise the video and rename it into place (a playable video of the frames so far);
        with no frame written, remove it."""
        if self.writer is None:
            return
        self.writer.release()
        if self.written:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


class CaptureLoop:
    """``run --video``'s capture loop: read, hand the frame to ``worker``, draw its latest
    tracks and the rates, write (``output``), call ``on_frame``, pace a file at ``fps_in``
    unless ``sync`` (without a screen), show; until the source ends, ``max_frames``, q/Esc,
    Ctrl-C or SIGTERM (``interrupted``, ``terminated``). Counts: ``read``, ``output.written``;
    ``loop_fps``: the smoothed frame rate drawn on the frames."""

    def __init__(self, cap: cv2.VideoCapture, name: str, live: bool, fps_in: float, frames_announced: int,
                 worker: InferenceWorker, output: VideoOutput) -> None:
        self.cap, self.name, self.live = cap, name, live
        self.fps_in, self.frames_announced = fps_in, frames_announced
        self.worker, self.output = worker, output
        self.read = 0
        self.loop_fps = 0.0
        self.interrupted = self.terminated = False
        self.t_start = self.t_prev = time.perf_counter()

    def run(self, frame: np.ndarray, display: bool, sync: bool, max_frames: int | None,
            on_frame: FrameHook | None, totals: Callable[[], StageTotals]) -> None:
        """Loop from ``frame`` (the first one read); ``totals``: the model side's stage times now."""
        with writes.terminate_as_interrupt():  # SIGTERM stops like Ctrl-C: the video is finalised
            try:
                while frame is not None:
                    self.read += 1
                    self.worker.submit(frame.copy())  # the worker's own copy: capture may reuse its buffer
                    tracks = self.worker.latest
                    drawn = self._draw(frame, tracks)
                    self.output.write(drawn)
                    if on_frame is not None:
                        on_frame(FrameStats(self.read, self.output.written, time.perf_counter() - self.t_start,
                                            self.loop_fps, self.worker.processed, self.worker.fps, totals(),
                                            tuple(tracks)))
                    if not self.live and (display or not sync):
                        self._pace()
                    if display:
                        key = show(drawn, 1)
                        if key is None:
                            display = False
                        elif key in QUIT_KEYS:
                            log.info("Stopped by the user after %d frames", self.read)
                            break
                    if self.worker.error is not None or (max_frames is not None and self.read >= max_frames):
                        break
                    frame = self._next_frame()
            except KeyboardInterrupt as exc:
                self.interrupted = True
                self.terminated = isinstance(exc, writes.Terminated)
                log.info("%s after %d frames", "Terminated" if self.terminated else "Interrupted", self.read)
            finally:
                with writes.signals_held():  # the video is finalised and renamed whatever arrives now
                    self.worker.stop()
                    self.cap.release()
                    self.output.close()
                    if display:
                        close_windows()

    def _draw(self, frame: np.ndarray, tracks: Sequence[TrackView]) -> np.ndarray:
        """The frame with the tracks and the rates (the loop's, smoothed, and the model's)."""
        drawn = draw_tracks(frame, tracks)
        now = time.perf_counter()
        dt, self.t_prev = now - self.t_prev, now
        if dt > 0:  # smoothed, so the number is readable
            self.loop_fps = 1.0 / dt if self.loop_fps == 0.0 else 0.9 * self.loop_fps + 0.1 / dt
        draw_fps(drawn, f"{self.loop_fps:.1f} fps | model {self.worker.fps:.1f} fps")
        return drawn

    def _pace(self) -> None:
        """Play a file at its own frame rate, like a camera: decoding runs far ahead of any model,
        and unpaced, the model would see a handful of frames of the file."""
        delay = self.t_start + self.read / self.fps_in - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    def _next_frame(self) -> np.ndarray | None:
        """The next frame, or None at the end (said when a stream stops or a file ends early)."""
        ok, frame = self.cap.read()
        if ok:
            return frame
        if self.live:
            log.warning("%s: no frame delivered after frame %d; stopping", self.name, self.read)
        elif self.read < 0.95 * self.frames_announced - 1:  # decoders may round the count a little
            log.warning("%s: the video ends at frame %d of the %d its header announces; the file "
                        "may be cut short or damaged", self.name, self.read, self.frames_announced)
        return None


def report_video(loop: CaptureLoop, process: TrackingProcess) -> dict:
    """Log the run's compact record, print its summary line; the summary dict ``run_video`` returns."""
    read, written, out_path, worker = loop.read, loop.output.written, loop.output.path, loop.worker
    elapsed = time.perf_counter() - loop.t_start
    skipped = process.totals.skipped
    beyond = f"; {counted(skipped, 'face')} beyond run.max_faces={process.max_faces} skipped" if skipped else ""
    summary = (f"Video {loop.name}: {counted(read, 'frame')} read, {written} written"
               f"{f' to {out_path}' if out_path else ''}; model ran on {counted(worker.processed, 'frame')} "
               f"at {worker.fps:.1f} fps; {read / elapsed if elapsed > 0 else 0.0:.1f} frames/s overall"
               f"{beyond}"
               f"{' (interrupted)' if loop.interrupted else ''}")
    log.info("summary: source=%s read=%d written=%d processed=%d model_fps=%.2f output=%s", loop.name, read,
             written, worker.processed, worker.fps, out_path)
    print(summary)
    return {"mode": "video", "source": loop.name, "frames_read": read, "frames_written": written,
            "frames_processed": worker.processed, "model_fps": worker.fps,
            "fps": read / elapsed if elapsed > 0 else 0.0, "faces_skipped": skipped,
            "output": str(out_path) if out_path else None}


def run_video(cfg: Any, run_dir: Path, pipeline: FacePipeline | None = None,
              on_frame: FrameHook | None = None) -> dict:
    """Video mode of ``run``; see the module docstring.

    ``cfg``: the composed config (``run.*``, ``detector``, the model); ``pipeline``: use this
    one instead of building it from ``cfg`` (with the detector's video settings); ``on_frame``:
    called with a ``FrameStats`` once per frame read (an exception from it stops the loop and
    propagates). Returns a summary dict (frames read, written, processed; rates in frames/s).
    """
    source = str(cfg.run.video).strip()
    out_path = video_output_path(cfg, run_dir, source)
    max_frames = int(cfg.run.max_frames) if cfg.run.max_frames else None
    try:
        tracker = IoUTracker(**cfg.run.tracker)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"run.tracker: {exc}") from None
    cap, name, is_camera = open_source(source)  # fail fast on a bad source, before loading the model
    display = want_display(bool(cfg.run.display))
    if out_path is None and not display:
        log.warning("Neither a screen nor run.output: the video is processed but nothing is shown or written")
    frame = first_frame(cap, name, is_camera)
    try:
        pipeline = pipeline or FacePipeline.from_config(cfg, video=True)
        pipeline.predictor.warmup(tta_flip=bool(cfg.run.video_tta_flip))  # trace the model now, not on frame 1
        fps_in, frames_announced = frame_rate(cap, name)
        output = VideoOutput(out_path, fps_in, (frame.shape[1], frame.shape[0]))
    except BaseException:
        cap.release()
        raise
    live = is_camera or "://" in source
    sync = bool(cfg.run.sync) and not live
    process = tracking_process(pipeline, tracker, int(cfg.run.max_faces), bool(cfg.run.video_tta_flip))
    worker = InferenceWorker(process, threaded=not sync)
    worker.start()
    loop = CaptureLoop(cap, name, live, fps_in, frames_announced, worker, output)
    log.info("Video %s: %dx%d at %.1f fps%s%s", name, frame.shape[1], frame.shape[0], fps_in,
             f", writing {out_path}" if out_path else "", ", every frame through the model (run.sync)" if sync else "")
    loop.run(frame, display, sync, max_frames, on_frame, lambda: process.totals)
    if worker.error is not None:
        raise worker.error
    summary = report_video(loop, process)
    if loop.terminated:
        raise writes.Terminated()  # after the summary: exit 143, what was written is kept
    return summary
