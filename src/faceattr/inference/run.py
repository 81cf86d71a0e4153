"""``python src/main.py run``: label the faces in images (``--img``) or a video (``--video``).

Images: every input is read, its faces detected and cropped, and the crops of several images
go through the model together (``run.batch_size`` faces per call). Results are one row per
face in ``run.output`` (.csv or .json) or ``<run dir>/predictions.csv``; annotated copies go to
``run.annotated_dir`` or ``<run dir>/annotated/``, never next to the inputs. A bad file is one
``error:`` line and is skipped; the command fails only if no input could be read. An existing
output file is refused unless ``run.overwrite=true`` (earlier results are never lost silently),
and the output file and the annotated folder are checked writable before any image is read.
With ``run.display=true``, a screen that can't be opened means no window (one log line), never
an aborted process (see ``display_problem``).

Video: a capture loop reads, draws and writes every frame and never waits for the model; a
worker thread runs detection, the model and the tracker on the newest frame it is handed
(a one-slot queue: older frames are dropped from inference, not from the output), and the
loop draws the latest tracked labels. So ``--output out.mp4`` has exactly the input's frames.
A video file is read at its own frame rate, as a camera would deliver it. ``run.sync=true``
instead puts every frame of a file through the model before it is written (offline analysis:
exact boxes on every frame, as fast as the model allows).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import os
import queue
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from faceattr.errors import ConfigError, FaceAttrError, InputError
from faceattr.inference.annotate import BOX_COLOUR, MISSED_COLOUR, annotate, draw_face, draw_fps, format_label
from faceattr.inference.images import expand_inputs, read_image
from faceattr.inference.pipeline import FaceCrop, FacePipeline
from faceattr.inference.predictor import FacePrediction
from faceattr.inference.tracking import IoUTracker

log = logging.getLogger(__name__)

#: Columns of the predictions file, in order (the JSON output has the same keys).
#: ``aligned``: whether the face was mapped onto the chip template by its landmarks (False: the
#: detection box with the detector's margin; see ``inference.align``).
COLUMNS: tuple[str, ...] = ("image", "face", "x", "y", "w", "h", "age", "gender", "race",
                            "gender_confidence", "race_confidence", "aligned")
TABLE_SUFFIXES = (".csv", ".json")
#: Video container -> FourCC. mp4v ships with every OpenCV wheel (H.264 often doesn't).
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}
ANNOTATED_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
WINDOW = "faceattr"
PENDING_BYTES = 256 * 2**20  # decoded images held while their faces wait for a model call
QUIT_KEYS = {ord("q"), ord("Q"), 27}  # q or Esc
#: Opening a window in a child process first: OpenCV's Qt back end aborts the whole process
#: (SIGABRT) when $DISPLAY names a screen it can't reach, so the real process never tries.
DISPLAY_PROBE = "import cv2; cv2.namedWindow('faceattr-probe'); cv2.destroyAllWindows()"
DISPLAY_PROBE_TIMEOUT_S = 5.0
NO_SCREEN = "No screen ($DISPLAY and $WAYLAND_DISPLAY unset)"


# ----------------------------------------------------------------------------------------
# Shared parts
# ----------------------------------------------------------------------------------------
@functools.cache
def display_problem() -> str | None:
    """Why no window can be shown here, or None when one can (checked once per process).

    On Linux/BSD a window needs $DISPLAY or $WAYLAND_DISPLAY, and the screen it names must
    answer: OpenCV's Qt/GTK back ends abort the process, not raise, when it doesn't. So a
    child process opens and closes a window first (a fraction of a second), and a failure or
    a hang past ``DISPLAY_PROBE_TIMEOUT_S`` means no window.
    """
    if sys.platform.startswith(("win", "darwin")):
        return None
    names = [f"${var}={os.environ[var]}" for var in ("DISPLAY", "WAYLAND_DISPLAY") if os.environ.get(var)]
    if not names:
        return NO_SCREEN
    screen = " / ".join(names)
    try:
        proc = subprocess.run([sys.executable, "-c", DISPLAY_PROBE], capture_output=True, text=True, errors="replace",
                              stdin=subprocess.DEVNULL, timeout=DISPLAY_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{screen}: opening a window took over {DISPLAY_PROBE_TIMEOUT_S:g} s"
    except OSError as exc:
        return f"{screen}: cannot check the screen ({exc.strerror or exc})"
    if proc.returncode == 0:
        return None
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    reason = next((line for line in lines if "display" in line.lower()), lines[-1] if lines else
                  f"exit code {proc.returncode}")
    return f"{screen}: cannot open a window ({reason[:200]})"


def screen_available() -> bool:
    """Whether a window can be shown (see ``display_problem``)."""
    return display_problem() is None


def _want_display(requested: bool) -> bool:
    if not requested:
        return False
    problem = display_problem()
    if problem is None:
        return True
    # No screen at all is the ordinary headless case; a screen that doesn't answer deserves a warning.
    (log.info if problem == NO_SCREEN else log.warning)("%s: not displaying", problem)
    return False


def _show(image: np.ndarray, wait_ms: int) -> int | None:
    """Show an image; returns the key pressed (or -1), None if this OpenCV can't show windows."""
    try:
        h, w = image.shape[:2]
        if max(h, w) > 1280:  # fit big photos on the screen
            s = 1280 / max(h, w)
            image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        cv2.imshow(WINDOW, image)
        return cv2.waitKey(wait_ms) & 0xFF
    except cv2.error as exc:  # headless OpenCV build
        log.warning("Cannot show a window (%s); not displaying", str(exc).strip().splitlines()[-1])
        return None


def _close_windows() -> None:
    with contextlib.suppress(cv2.error):
        cv2.destroyAllWindows()


def write_problem(path: Path, folder: bool = False) -> str | None:
    """Why the file ``path`` (or the folder, with ``folder=True``) can't be written, or None.

    Nothing is left behind: the nearest existing folder on the way is found (a file there is a
    problem) and a temporary file is made and removed in it, which catches read-only and
    pseudo file systems (``/proc``) that permission bits alone don't show.
    """
    probe = path if folder else path.parent
    while True:
        try:
            mode = os.stat(probe).st_mode
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                return "no existing folder above it"
            probe = probe.parent
        except OSError as exc:
            return f"{probe}: {exc.strerror or exc}"
    if not stat.S_ISDIR(mode):
        return f"{probe} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".faceattr-write-check-", dir=probe)
    except OSError as exc:
        return f"{probe} does not accept new files: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(name)
    return None


def _output_path(value: Any, default: Path, suffixes: Sequence[str], overwrite: bool, what: str) -> Path:
    """Validate ``run.output`` before any work: known suffix, writable, and no silent overwrite."""
    path = Path(str(value)).expanduser() if value not in (None, "") else default
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{path}: unknown {what} output type {path.suffix or '(no suffix)'!r}; "
                         f"use {' or '.join(suffixes)}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name for the output")
    problem = write_problem(path)
    if problem is not None:
        raise InputError(f"{path}: cannot be written ({problem})")
    if path.exists():
        if not overwrite:
            raise InputError(f"{path}: already exists; choose another --output or set run.overwrite=true")
        log.warning("Overwriting %s (run.overwrite=true)", path)
    return path


def _report(message: str, stream: Any = None) -> None:
    """One line to the user (stdout unless ``stream``), without breaking a tqdm progress bar."""
    tqdm.write(message, file=stream or sys.stdout)


# ----------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------
@dataclass
class _Pending:
    path: Path
    image: np.ndarray
    faces: list[FaceCrop]


@dataclass
class ImageRunStats:
    images: int = 0
    read: int = 0
    faces: int = 0
    no_face: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


def _unique_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem+suffix``, or ``stem-1``, ``stem-2``... so no existing file is replaced."""
    candidate = folder / f"{stem}{suffix}"
    k = 1
    while candidate.exists():
        candidate = folder / f"{stem}-{k}{suffix}"
        k += 1
    return candidate


def _write_image(path: Path, image_bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(path.suffix, image_bgr)
    if not ok:
        raise InputError(f"{path}: cannot encode the annotated image")
    path.write_bytes(buf.tobytes())  # via Python, so non-ASCII paths work everywhere


def _face_row(path: Path, index: int, face: FaceCrop, pred: FacePrediction) -> dict:
    det = face.detection
    return {"image": str(path), "face": index, "x": det.x, "y": det.y, "w": det.w, "h": det.h,
            "age": round(pred.age, 1), "gender": pred.gender, "race": pred.race,
            "gender_confidence": round(pred.gender_confidence, 4), "race_confidence": round(pred.race_confidence, 4),
            "aligned": face.aligned}


def write_rows(rows: list[dict], path: Path) -> None:
    """Write face rows as CSV or JSON (by suffix), atomically: a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix.lower() == ".json":
        tmp.write_text(json.dumps([{k: r[k] for k in COLUMNS} for r in rows], indent=2) + "\n")
    else:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    os.replace(tmp, path)


def run_images(cfg: Any, run_dir: Path, pipeline: FacePipeline | None = None) -> dict:
    """Images mode of ``run_command``; see the module docstring."""
    items = cfg.run.img
    items = [items] if isinstance(items, str) else [str(i) for i in items]
    paths = expand_inputs(items)
    if not paths:
        raise InputError(f"{', '.join(items)}: no image files found")
    overwrite = bool(cfg.run.overwrite)
    out_path = _output_path(cfg.run.output, run_dir / "predictions.csv", TABLE_SUFFIXES, overwrite, "predictions")
    annotated_dir = Path(cfg.run.annotated_dir).expanduser() if cfg.run.annotated_dir else run_dir / "annotated"
    annotate_images = bool(cfg.run.annotate)
    problem = write_problem(annotated_dir, folder=True) if annotate_images else None
    if problem is not None:
        raise ConfigError(f"run.annotated_dir: {annotated_dir}: cannot be written ({problem})")
    input_dirs = {p.parent.resolve() for p in paths if p.exists()}
    if annotate_images and annotated_dir.resolve() in input_dirs:
        raise ConfigError(f"run.annotated_dir: {annotated_dir} holds input images; annotated copies are never "
                          "written next to the inputs, choose another folder")
    display = _want_display(bool(cfg.run.display))
    built: list[FacePipeline] = [pipeline] if pipeline is not None else []

    def get_pipeline() -> FacePipeline:
        # Built on the first readable image, so a batch of bad paths fails before TF loads a model.
        if not built:
            built.append(FacePipeline.from_config(cfg))
        return built[0]

    single = len(paths) == 1
    stats = ImageRunStats(images=len(paths))
    pending: list[_Pending] = []

    def flush() -> None:
        nonlocal display
        if not pending:
            return
        preds = iter(get_pipeline().predict([f for p in pending for f in p.faces]))
        for item in pending:
            faces = [(f, next(preds)) for f in item.faces]
            stats.rows.extend(_face_row(item.path, i, f, p) for i, (f, p) in enumerate(faces))
            if not annotate_images and not display:
                continue
            drawn = annotate(item.image, [(f.detection.box, p) for f, p in faces])
            if annotate_images:
                annotated_dir.mkdir(parents=True, exist_ok=True)
                suffix = item.path.suffix.lower() if item.path.suffix.lower() in ANNOTATED_SUFFIXES else ".png"
                _write_image(_unique_path(annotated_dir, item.path.stem, suffix), drawn)
            if display:
                key = _show(drawn, 0)
                if key is None or key in QUIT_KEYS:  # q/Esc: stop showing, keep processing
                    display = False
                    _close_windows()
        pending.clear()

    with tqdm(paths, desc="images", unit="img", disable=len(paths) <= 3, file=sys.stderr) as bar:
        for path in bar:
            try:
                image = read_image(path)
            except InputError as exc:
                if single:
                    raise  # the command's one error line
                stats.errors.append(str(exc))
                log.warning("%s", exc)
                _report(f"error: {exc}", sys.stderr)
                continue
            stats.read += 1
            faces = get_pipeline().crops(image)
            if not faces:
                stats.no_face.append(str(path))
                log.info("%s: no face found", path)
                _report(f"{path}: no face found")
                continue
            stats.faces += len(faces)
            pending.append(_Pending(path, image, faces))
            # Faces of several images share a model call; big photos are flushed sooner so a batch of
            # 24-megapixel images doesn't pile up gigabytes while waiting for batch_size faces.
            if (sum(len(p.faces) for p in pending) >= get_pipeline().predictor.batch_size
                    or sum(p.image.nbytes for p in pending) >= PENDING_BYTES):
                flush()
        flush()
    if display:
        _close_windows()
    if stats.read == 0:
        raise InputError(f"none of the {stats.images} inputs could be read ({len(stats.errors)} errors above)")
    write_rows(stats.rows, out_path)
    # app.log gets a compact record; the console gets the readable summary.
    log.info("summary: images=%d read=%d faces=%d no_face=%d unreadable=%d output=%s annotated=%s", stats.images,
             stats.read, stats.faces, len(stats.no_face), len(stats.errors), out_path, annotated_dir)
    print(f"{stats.images} image(s): {stats.faces} face(s) in {stats.read - len(stats.no_face)} image(s); "
          f"{len(stats.no_face)} without a face, {len(stats.errors)} unreadable (skipped)")
    print(f"Predictions: {out_path}")
    print(f"Annotated images: {annotated_dir}" if annotate_images else "Annotated images: none (run.annotate=false)")
    return {"mode": "images", "images": stats.images, "read": stats.read, "faces": stats.faces,
            "no_face": stats.no_face, "errors": stats.errors, "output": str(out_path),
            "annotated_dir": str(annotated_dir) if annotate_images else None}


# ----------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackView:
    """What the drawing loop needs of one track (an immutable snapshot)."""

    track_id: int
    box: tuple[int, int, int, int]
    prediction: FacePrediction | None
    missed: int


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
        if self._thread is not None:
            self._thread.start()

    def submit(self, frame: np.ndarray) -> None:
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


def _tracking_process(pipeline: FacePipeline, tracker: IoUTracker) -> Callable[[np.ndarray], list[TrackView]]:
    def process(frame: np.ndarray) -> list[TrackView]:
        detections = pipeline.detector.detect(frame)
        # Only new faces and tracks due a refresh go through the model (run.tracker.refresh_every).
        need = tracker.needs_prediction(detections)
        due = [d for d, n in zip(detections, need, strict=True) if n]
        fresh = iter(pipeline.predict(pipeline.crop(frame, due)))
        tracks = tracker.update(detections, [next(fresh) if n else None for n in need])
        return [TrackView(t.track_id, t.box, t.prediction, t.missed) for t in tracks]

    return process


def draw_tracks(frame: np.ndarray, tracks: Sequence[TrackView]) -> np.ndarray:
    """A copy of the frame with each track's box and smoothed label (amber while missed)."""
    out = frame.copy()
    for t in tracks:
        draw_face(out, t.box, f"#{t.track_id} {format_label(t.prediction)}", MISSED_COLOUR if t.missed else BOX_COLOUR)
    return out


def _open_source(source: str) -> tuple[cv2.VideoCapture, str, bool]:
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


def run_video(cfg: Any, run_dir: Path, pipeline: FacePipeline | None = None) -> dict:
    """Video mode of ``run_command``; see the module docstring."""
    source = str(cfg.run.video).strip()
    overwrite = bool(cfg.run.overwrite)
    out_path = None
    if cfg.run.output:
        out_path = _output_path(cfg.run.output, run_dir / "annotated.mp4", tuple(VIDEO_CODECS), overwrite, "video")
        if not source.isdigit() and Path(source).exists() and out_path.resolve() == Path(source).resolve():
            raise InputError(f"{out_path}: the output would overwrite the input video")
    max_frames = int(cfg.run.max_frames) if cfg.run.max_frames else None
    try:
        tracker = IoUTracker(**cfg.run.tracker)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"run.tracker: {exc}") from None
    cap, name, is_camera = _open_source(source)  # fail fast on a bad source, before loading the model
    display = _want_display(bool(cfg.run.display))
    if out_path is None and not display:
        log.warning("Neither a screen nor run.output: the video is processed but nothing is shown or written")
    ok, frame = cap.read()
    if not ok or frame is None:
        cap.release()
        raise InputError(f"{name}: cannot be opened" + (" (no frames)" if is_camera else " as a video (no frames)"))
    try:
        pipeline = pipeline or FacePipeline.from_config(cfg, video=True)
        pipeline.predictor.warmup()  # trace the model now, not on the first frame
    except BaseException:
        cap.release()
        raise
    fps_in = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not 0.5 <= fps_in <= 1000.0:  # cameras often report 0
        log.info("%s reports %.3g fps; using 30", name, fps_in)
        fps_in = 30.0
    height, width = frame.shape[:2]
    writer = None
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*VIDEO_CODECS[out_path.suffix.lower()]),
                                 fps_in, (width, height))
        if not writer.isOpened():
            cap.release()
            raise InputError(f"{out_path}: cannot be written as a video "
                             f"(codec {VIDEO_CODECS[out_path.suffix.lower()]} unavailable)")

    live = is_camera or "://" in source
    sync = bool(cfg.run.sync) and not live
    worker = InferenceWorker(_tracking_process(pipeline, tracker), threaded=not sync)
    worker.start()
    read = written = 0
    interrupted = False
    loop_fps = 0.0
    t_start = t_prev = time.perf_counter()
    log.info("Video %s: %dx%d at %.1f fps%s%s", name, width, height, fps_in,
             f", writing {out_path}" if out_path else "", ", every frame through the model (run.sync)" if sync else "")
    try:
        while frame is not None:
            read += 1
            worker.submit(frame.copy())  # the worker's own copy: capture may reuse its buffer
            drawn = draw_tracks(frame, worker.latest)
            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            if dt > 0:  # smoothed, so the number is readable
                loop_fps = 1.0 / dt if loop_fps == 0.0 else 0.9 * loop_fps + 0.1 / dt
            draw_fps(drawn, f"{loop_fps:.1f} fps | model {worker.fps:.1f} fps")
            if writer is not None:
                if drawn.shape[:2] != (height, width):
                    drawn = cv2.resize(drawn, (width, height), interpolation=cv2.INTER_AREA)
                writer.write(drawn)
                written += 1
            if not live and (display or not sync):
                # Play a file at its own frame rate, like a camera: decoding runs far ahead of
                # any model, and unpaced, the model would see a handful of frames of the file.
                delay = t_start + read / fps_in - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if display:
                key = _show(drawn, 1)
                if key is None:
                    display = False
                elif key in QUIT_KEYS:
                    log.info("Stopped by the user after %d frames", read)
                    break
            if worker.error is not None or (max_frames is not None and read >= max_frames):
                break
            ok, frame = cap.read()
            if not ok:
                frame = None
    except KeyboardInterrupt:
        interrupted = True
        log.info("Interrupted after %d frames", read)
    finally:
        worker.stop()
        cap.release()
        if writer is not None:
            writer.release()
        if display:
            _close_windows()
    if worker.error is not None:
        raise worker.error
    elapsed = time.perf_counter() - t_start
    summary = (f"Video {name}: {read} frame(s) read, {written} written"
               f"{f' to {out_path}' if out_path else ''}; model ran on {worker.processed} frame(s) "
               f"at {worker.fps:.1f} fps; {read / elapsed if elapsed > 0 else 0.0:.1f} frames/s overall"
               f"{' (interrupted)' if interrupted else ''}")
    log.info("summary: source=%s read=%d written=%d processed=%d model_fps=%.2f output=%s", name, read, written,
             worker.processed, worker.fps, out_path)
    print(summary)
    return {"mode": "video", "source": name, "frames_read": read, "frames_written": written,
            "frames_processed": worker.processed, "model_fps": worker.fps,
            "fps": read / elapsed if elapsed > 0 else 0.0, "output": str(out_path) if out_path else None}


# ----------------------------------------------------------------------------------------
# Entry
# ----------------------------------------------------------------------------------------
def run_command(cfg: Any, run_dir: Path) -> dict:
    """``python src/main.py run``: images mode (``run.img``) or video mode (``run.video``).

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
