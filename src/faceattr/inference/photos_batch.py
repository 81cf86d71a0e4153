"""``run --img``: label the faces in image files, folders and globs.

Every input is read, its faces detected and cropped, and the crops of several images go
through the model together (``run.batch_size`` faces per call). Results are one row per face
in ``run.output`` (.csv or .json) or ``<run dir>/predictions.csv``; annotated copies go to
``run.annotated_dir`` or ``<run dir>/annotated/``, never next to the inputs
(``run.annotate=false``, ``--no-annotate``: predictions only). With ``run.save_faces``
(``--save-faces``) each face as the model saw it (aligned onto the chip template, at the model's
input size) is written as ``<image stem>_face<N>.png`` to ``run.faces_dir`` or
``<run dir>/faces/``, N being the row's ``face``. A bad file is one ``error:``
line and is skipped; the command fails only if no input could be read. An existing output
file is refused unless ``run.overwrite=true`` (earlier results are never lost silently), and
the output file and the output folders are checked writable before any image is read.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from faceattr import writes
from faceattr.errors import ConfigError, InputError
from faceattr.inference.annotate import annotate
from faceattr.inference.display import QUIT_KEYS, close_windows, show, want_display
from faceattr.inference.images import expand_inputs, read_image
from faceattr.inference.outputs import counted, output_path, write_problem
from faceattr.inference.pipeline import FaceCrop, FacePipeline
from faceattr.inference.predictor import FacePrediction

log = logging.getLogger(__name__)

#: Columns of the predictions file, in order (the JSON output has the same keys).
#: ``aligned``: whether the face was mapped onto the chip template by its landmarks (False: the
#: detection box with the detector's margin; see ``inference.align``).
COLUMNS: tuple[str, ...] = ("image", "face", "x", "y", "w", "h", "age", "gender", "race",
                            "gender_confidence", "race_confidence", "aligned")
TABLE_SUFFIXES = (".csv", ".json")
ANNOTATED_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
PENDING_BYTES = 256 * 2**20  # decoded images held while their faces wait for a model call


@dataclass
class _Pending:
    path: Path
    image: np.ndarray
    faces: list[FaceCrop]


@dataclass
class ImageRunStats:
    """Counts of one images run: inputs, inputs read, faces; paths without a face, error lines,
    and the result rows (``COLUMNS``)."""

    images: int = 0
    read: int = 0
    faces: int = 0
    no_face: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


def report(message: str, stream: Any = None) -> None:
    """One line to the user (stdout unless ``stream``), without breaking a tqdm progress bar."""
    tqdm.write(message, file=stream or sys.stdout)


def unique_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem+suffix``, or ``stem-1``, ``stem-2``... so no existing file is replaced."""
    candidate = folder / f"{stem}{suffix}"
    k = 1
    while candidate.exists():
        candidate = folder / f"{stem}-{k}{suffix}"
        k += 1
    return candidate


def write_image(path: Path, image_bgr: np.ndarray) -> None:
    """Encode an (H, W, 3) BGR image by ``path``'s suffix and write it (any path, non-ASCII too)."""
    ok, buf = cv2.imencode(path.suffix, image_bgr)
    if not ok:
        raise InputError(f"{path}: cannot encode the image")
    with writes.replacing(path, durable=False) as tmp:  # a full disk: one line, no half image left
        tmp.write_bytes(buf.tobytes())  # via Python, so non-ASCII paths work everywhere


def face_row(path: Path, index: int, face: FaceCrop, pred: FacePrediction) -> dict:
    """The result row (``COLUMNS``) of face ``index`` of image ``path``: box in pixels, age in
    years (1 decimal), class names and confidences (4 decimals)."""
    det = face.detection
    return {"image": str(path), "face": index, "x": det.x, "y": det.y, "w": det.w, "h": det.h,
            "age": round(pred.age, 1), "gender": pred.gender, "race": pred.race,
            "gender_confidence": round(pred.gender_confidence, 4), "race_confidence": round(pred.race_confidence, 4),
            "aligned": face.aligned}


def write_rows(rows: list[dict], path: Path) -> None:
    """Write face rows as CSV or JSON (by suffix) in UTF-8, through ``writes.replacing``: a crash
    or a full disk leaves no half file and no temporary (one line naming ``path``)."""
    with writes.replacing(path) as tmp, writes.open_text(tmp) as fh:
        if path.suffix.lower() == ".json":
            fh.write(json.dumps([{k: r[k] for k in COLUMNS} for r in rows], indent=2, ensure_ascii=False) + "\n")
        else:
            writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


@dataclass
class ImagesPlan:
    """What an images run reads and writes, checked before any image is read: the input
    ``paths``, the predictions file ``out_path``, and the folders of annotated copies and face
    crops with whether each is written (``annotate``, ``save_faces``)."""

    paths: list[Path]
    out_path: Path
    overwrite: bool
    annotated_dir: Path
    annotate: bool
    faces_dir: Path
    save_faces: bool


def plan_images(cfg: Any, run_dir: Path) -> ImagesPlan:
    """The inputs and outputs of ``run --img`` from ``cfg.run``; ``InputError`` when no image
    is found or the output file exists, ``ConfigError`` for an output folder that can't be
    written or holds input images (nothing is ever written next to the inputs)."""
    items = cfg.run.img
    items = [items] if isinstance(items, str) else [str(i) for i in items]
    paths = expand_inputs(items)
    if not paths:
        raise InputError(f"{', '.join(items)}: no image files found")
    overwrite = bool(cfg.run.overwrite)
    plan = ImagesPlan(
        paths, output_path(cfg.run.output, run_dir / "predictions.csv", TABLE_SUFFIXES, overwrite, "predictions"),
        overwrite, Path(cfg.run.annotated_dir).expanduser().absolute() if cfg.run.annotated_dir
        else run_dir / "annotated", bool(cfg.run.annotate),
        Path(cfg.run.faces_dir).expanduser().absolute() if cfg.run.faces_dir else run_dir / "faces",
        bool(cfg.run.save_faces))
    input_dirs = {p.parent.resolve() for p in paths if p.exists()}
    for key, folder, wanted, what in (("run.annotated_dir", plan.annotated_dir, plan.annotate, "annotated copies"),
                                      ("run.faces_dir", plan.faces_dir, plan.save_faces, "face crops")):
        problem = write_problem(folder, folder=True) if wanted else None
        if problem is not None:
            raise ConfigError(f"{key}: {folder}: cannot be written ({problem})")
        if wanted and folder.resolve() in input_dirs:
            raise ConfigError(f"{key}: {folder} holds input images; {what} are never written next to the inputs, "
                              "choose another folder")
    return plan


class ImageBatches:
    """The faces of several images through the model together, then each image's outputs.

    ``add`` queues an image's faces; once ``run.batch_size`` faces (or ``PENDING_BYTES`` of
    decoded images) wait, ``flush`` predicts them in one call and writes each image's rows
    (into ``stats.rows``), face crops, annotated copy, and shows it when ``display``. The
    pipeline is built from ``cfg`` on first use, so a batch of bad paths fails before TF
    loads a model.
    """

    def __init__(self, cfg: Any, plan: ImagesPlan, stats: ImageRunStats, pipeline: FacePipeline | None,
                 display: bool) -> None:
        self.cfg = cfg
        self.plan = plan
        self.stats = stats
        self._pipeline = pipeline
        self.display = display
        self.pending: list[_Pending] = []

    @property
    def pipeline(self) -> FacePipeline:
        """The face pipeline, built on first use."""
        if self._pipeline is None:
            self._pipeline = FacePipeline.from_config(self.cfg)
        return self._pipeline

    def add(self, path: Path, image: np.ndarray, faces: list[FaceCrop]) -> None:
        """Queue ``image``'s faces; flush when a model call's worth (or too many bytes) waits."""
        self.pending.append(_Pending(path, image, faces))
        # Faces of several images share a model call; big photos are flushed sooner so a batch of
        # 24-megapixel images doesn't pile up gigabytes while waiting for batch_size faces.
        if (sum(len(p.faces) for p in self.pending) >= self.pipeline.predictor.batch_size
                or sum(p.image.nbytes for p in self.pending) >= PENDING_BYTES):
            self.flush()

    def flush(self) -> None:
        """Predict every waiting face in one model call, then write each image's outputs."""
        if not self.pending:
            return
        preds = iter(self.pipeline.predict([f for p in self.pending for f in p.faces]))
        for item in self.pending:
            self._write(item, [(f, next(preds)) for f in item.faces])
        self.pending.clear()

    def _write(self, item: _Pending, faces: list[tuple[FaceCrop, FacePrediction]]) -> None:
        """One image's rows, face crops and annotated copy, and showing it."""
        plan = self.plan
        self.stats.rows.extend(face_row(item.path, i, f, p) for i, (f, p) in enumerate(faces))
        if plan.save_faces:
            plan.faces_dir.mkdir(parents=True, exist_ok=True)
            for i, f in enumerate(item.faces):
                write_image(unique_path(plan.faces_dir, f"{item.path.stem}_face{i}", ".png"),
                            cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
        if not plan.annotate and not self.display:
            return
        drawn = annotate(item.image, [(f.detection.box, p) for f, p in faces])
        if plan.annotate:
            plan.annotated_dir.mkdir(parents=True, exist_ok=True)
            suffix = item.path.suffix.lower() if item.path.suffix.lower() in ANNOTATED_SUFFIXES else ".png"
            write_image(unique_path(plan.annotated_dir, item.path.stem, suffix), drawn)
        if self.display:
            key = show(drawn, 0)
            if key is None or key in QUIT_KEYS:  # q/Esc: stop showing, keep processing
                self.display = False
                close_windows()


def label_images(plan: ImagesPlan, batches: ImageBatches) -> None:
    """Read every input, find its faces and queue them (``batches``), counting into
    ``batches.stats``; an unreadable input is one ``error:`` line and skipped (the error itself
    when it is the only input)."""
    stats = batches.stats
    with tqdm(plan.paths, desc="images", unit="img", disable=len(plan.paths) <= 3, file=sys.stderr) as bar:
        for path in bar:
            try:
                image = read_image(path)
            except InputError as exc:
                if len(plan.paths) == 1:
                    raise  # the command's one error line
                stats.errors.append(str(exc))
                log.warning("%s", exc)
                report(f"error: {exc}", sys.stderr)
                continue
            stats.read += 1
            faces = batches.pipeline.crops(image)
            if not faces:
                stats.no_face.append(str(path))
                log.info("%s: no face found", path)
                report(f"{path}: no face found")
                continue
            stats.faces += len(faces)
            batches.add(path, image, faces)
        batches.flush()


def keep_rows_when_stopped(stats: ImageRunStats, out_path: Path) -> None:
    """After Ctrl-C or SIGTERM: write the rows done so far to ``out_path`` and say so (signals held)."""
    with writes.signals_held():
        if stats.rows:
            write_rows(stats.rows, out_path)
            report(f"stopped: the {counted(len(stats.rows), 'face')} labelled so far "
                   f"(of {counted(stats.images, 'image')}) are in {out_path}", sys.stderr)
        else:
            report("stopped before any face was labelled; nothing written", sys.stderr)


def report_images(plan: ImagesPlan, stats: ImageRunStats) -> dict:
    """Log the run's compact record, print its readable summary; the summary dict ``run_images`` returns."""
    # app.log gets a compact record (only the outputs written); the console gets the readable summary.
    written = {"output": plan.out_path, "annotated": plan.annotated_dir if plan.annotate else None,
               "face_crops": plan.faces_dir if plan.save_faces else None}
    log.info("summary: images=%d read=%d faces=%d no_face=%d unreadable=%d %s", stats.images, stats.read,
             stats.faces, len(stats.no_face), len(stats.errors),
             " ".join(f"{key}={value}" for key, value in written.items() if value is not None))
    line = f"{counted(stats.images, 'image')}: {counted(stats.faces, 'face')}"
    if stats.images > 1:
        line += f" in {counted(stats.read - len(stats.no_face), 'image')}"
    if stats.no_face:
        line += f"; {len(stats.no_face)} without a face"
    if stats.errors:
        line += f"; {len(stats.errors)} unreadable (skipped)"
    print(line)
    print(f"Predictions: {plan.out_path}")
    print(f"Annotated images: {plan.annotated_dir}" if plan.annotate
          else "Annotated images: none (run.annotate=false)")
    if plan.save_faces:
        print(f"Faces as the model saw them: {plan.faces_dir}")
    return {"mode": "images", "images": stats.images, "read": stats.read, "faces": stats.faces,
            "no_face": stats.no_face, "errors": stats.errors, "output": str(plan.out_path),
            "annotated_dir": str(plan.annotated_dir) if plan.annotate else None,
            "faces_dir": str(plan.faces_dir) if plan.save_faces else None}


def run_images(cfg: Any, run_dir: Path, pipeline: FacePipeline | None = None) -> dict:
    """Images mode of ``run``; see the module docstring.

    ``cfg``: the composed config (``run.*``, ``detector``, the model); ``pipeline``: use this
    one instead of building it from ``cfg`` on the first readable image. Returns a summary dict
    (counts, where the results went).
    """
    plan = plan_images(cfg, run_dir)
    stats = ImageRunStats(images=len(plan.paths))
    batches = ImageBatches(cfg, plan, stats, pipeline, want_display(bool(cfg.run.display)))
    out_path = plan.out_path
    with writes.exclusive(out_path, "run"), writes.terminate_as_interrupt():  # a second run to this file: one line
        if out_path.exists() and not plan.overwrite:  # written by a run that ended while this one started
            raise InputError(f"{out_path}: already exists; choose another --output or set run.overwrite=true")
        try:
            label_images(plan, batches)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what was done, say so, then stop as asked
            keep_rows_when_stopped(stats, out_path)
            raise
        if batches.display:
            close_windows()
        if stats.read == 0:
            raise InputError(f"none of the {stats.images} inputs could be read ({len(stats.errors)} errors above)")
        write_rows(stats.rows, out_path)
    return report_images(plan, stats)
