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


def run_images(cfg: Any, run_dir: Path, pipeline: FacePipeline | None = None) -> dict:
    """Images mode of ``run``; see the module docstring.

    ``cfg``: the composed config (``run.*``, ``detector``, the model); ``pipeline``: use this
    one instead of building it from ``cfg`` on the first readable image. Returns a summary dict
    (counts, where the results went).
    """
    items = cfg.run.img
    items = [items] if isinstance(items, str) else [str(i) for i in items]
    paths = expand_inputs(items)
    if not paths:
        raise InputError(f"{', '.join(items)}: no image files found")
    overwrite = bool(cfg.run.overwrite)
    out_path = output_path(cfg.run.output, run_dir / "predictions.csv", TABLE_SUFFIXES, overwrite, "predictions")
    annotated_dir = (Path(cfg.run.annotated_dir).expanduser().absolute() if cfg.run.annotated_dir
                     else run_dir / "annotated")
    annotate_images = bool(cfg.run.annotate)
    faces_dir = Path(cfg.run.faces_dir).expanduser().absolute() if cfg.run.faces_dir else run_dir / "faces"
    save_faces = bool(cfg.run.save_faces)
    input_dirs = {p.parent.resolve() for p in paths if p.exists()}
    for key, folder, wanted, what in (("run.annotated_dir", annotated_dir, annotate_images, "annotated copies"),
                                      ("run.faces_dir", faces_dir, save_faces, "face crops")):
        problem = write_problem(folder, folder=True) if wanted else None
        if problem is not None:
            raise ConfigError(f"{key}: {folder}: cannot be written ({problem})")
        if wanted and folder.resolve() in input_dirs:
            raise ConfigError(f"{key}: {folder} holds input images; {what} are never written next to the inputs, "
                              "choose another folder")
    display = want_display(bool(cfg.run.display))
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
            stats.rows.extend(face_row(item.path, i, f, p) for i, (f, p) in enumerate(faces))
            if save_faces:
                faces_dir.mkdir(parents=True, exist_ok=True)
                for i, f in enumerate(item.faces):
                    write_image(unique_path(faces_dir, f"{item.path.stem}_face{i}", ".png"),
                                cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
            if not annotate_images and not display:
                continue
            drawn = annotate(item.image, [(f.detection.box, p) for f, p in faces])
            if annotate_images:
                annotated_dir.mkdir(parents=True, exist_ok=True)
                suffix = item.path.suffix.lower() if item.path.suffix.lower() in ANNOTATED_SUFFIXES else ".png"
                write_image(unique_path(annotated_dir, item.path.stem, suffix), drawn)
            if display:
                key = show(drawn, 0)
                if key is None or key in QUIT_KEYS:  # q/Esc: stop showing, keep processing
                    display = False
                    close_windows()
        pending.clear()

    with writes.exclusive(out_path, "run"), writes.terminate_as_interrupt():  # a second run to this file: one line
        if out_path.exists() and not overwrite:  # written by a run that ended while this one started
            raise InputError(f"{out_path}: already exists; choose another --output or set run.overwrite=true")
        try:
            with tqdm(paths, desc="images", unit="img", disable=len(paths) <= 3, file=sys.stderr) as bar:
                for path in bar:
                    try:
                        image = read_image(path)
                    except InputError as exc:
                        if single:
                            raise  # the command's one error line
                        stats.errors.append(str(exc))
                        log.warning("%s", exc)
                        report(f"error: {exc}", sys.stderr)
                        continue
                    stats.read += 1
                    faces = get_pipeline().crops(image)
                    if not faces:
                        stats.no_face.append(str(path))
                        log.info("%s: no face found", path)
                        report(f"{path}: no face found")
                        continue
                    stats.faces += len(faces)
                    pending.append(_Pending(path, image, faces))
                    # Faces of several images share a model call; big photos are flushed sooner so a batch of
                    # 24-megapixel images doesn't pile up gigabytes while waiting for batch_size faces.
                    if (sum(len(p.faces) for p in pending) >= get_pipeline().predictor.batch_size
                            or sum(p.image.nbytes for p in pending) >= PENDING_BYTES):
                        flush()
                flush()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what was done, say so, then stop as asked
            with writes.signals_held():
                if stats.rows:
                    write_rows(stats.rows, out_path)
                    report(f"stopped: the {counted(len(stats.rows), 'face')} labelled so far "
                           f"(of {counted(stats.images, 'image')}) are in {out_path}", sys.stderr)
                else:
                    report("stopped before any face was labelled; nothing written", sys.stderr)
            raise
        if display:
            close_windows()
        if stats.read == 0:
            raise InputError(f"none of the {stats.images} inputs could be read ({len(stats.errors)} errors above)")
        write_rows(stats.rows, out_path)
    # app.log gets a compact record (only the outputs written); the console gets the readable summary.
    written = {"output": out_path, "annotated": annotated_dir if annotate_images else None,
               "face_crops": faces_dir if save_faces else None}
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
    print(f"Predictions: {out_path}")
    print(f"Annotated images: {annotated_dir}" if annotate_images else "Annotated images: none (run.annotate=false)")
    if save_faces:
        print(f"Faces as the model saw them: {faces_dir}")
    return {"mode": "images", "images": stats.images, "read": stats.read, "faces": stats.faces,
            "no_face": stats.no_face, "errors": stats.errors, "output": str(out_path),
            "annotated_dir": str(annotated_dir) if annotate_images else None,
            "faces_dir": str(faces_dir) if save_faces else None}
