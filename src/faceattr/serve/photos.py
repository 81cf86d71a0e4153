"""An uploaded photo through the toolkit's face pipeline, as ``run --img`` does it.

The checks come first and cost nothing: the byte count (``serve.max_upload_mb``), then the
width x height read from the file's header alone (``serve.max_pixels``), so a decompression
bomb is refused before a pixel is decoded. Then ``inference.images.read_image`` (truncated
files, EXIF orientation, alpha, 16 bits), ``FacePipeline`` (detect, align onto the model's
chip template, predict) and ``inference.annotate`` (the boxes and labels of ``run``'s
annotated images, each face numbered).
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import cv2
import numpy as np

from faceattr.errors import InputError
from faceattr.inference.annotate import draw_face, format_label
from faceattr.inference.images import read_image
from faceattr.inference.pipeline import FacePipeline
from faceattr.inference.predictor import FacePrediction
from faceattr.serve.store import Face, StorageError, Store


class TooLarge(InputError):
    """The upload has more bytes than ``serve.max_upload_mb`` allows (HTTP 413)."""


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from an image file's header, without decoding its pixels;
    None when no known format's header is found."""
    from PIL import Image  # deferred: Pillow, only to read an upload's header

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns of large images; the caller decides
        try:
            with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
                return int(img.size[0]), int(img.size[1])
        except Image.DecompressionBombError as exc:
            # Pillow refuses to even open very large images; its message holds the pixel count,
            # returned as (count, 1).
            m = re.search(r"\((\d+) pixels\)", str(exc))
            return (int(m[1]) if m else 2**31 - 1, 1)
        except Exception:
            return None


def check_upload(data: bytes, name: str, max_bytes: int, max_pixels: int) -> None:
    """Raise ``TooLarge`` or ``InputError`` ("<name>: <problem>") before anything is decoded."""
    if len(data) > max_bytes:
        raise TooLarge(f"{name}: {len(data) / 2**20:.1f} MB is over the limit of {max_bytes / 2**20:g} MB")
    if not data:
        raise InputError(f"{name}: empty file")
    size = header_size(data)
    if size is None:
        raise InputError(f"{name}: not an image (no known image header)")
    w, h = size
    if w * h > max_pixels:
        shown = f"{w}x{h}" if h > 1 else f"{w / 1e6:,.0f} megapixels"
        raise InputError(f"{name}: {shown} is over the limit of {max_pixels / 1e6:g} megapixels")


def _write_jpeg(path: Path, image_bgr: np.ndarray, quality: int = 92) -> None:
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InputError(f"{path.name}: cannot encode the image")
    try:
        path.write_bytes(buf.tobytes())
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise StorageError(f"a file cannot be written into the data folder ({exc.strerror or exc})") from None


def face_label(face: Face, fix: dict | None = None) -> str:
    """``"1: 34y female 97% | white 88%"``, as ``run`` labels a face, numbered from 1; corrected
    values are shown with a ``*`` and without a confidence."""
    fix = fix or {}
    if not fix:
        pred = FacePrediction(face.age, face.gender, face.gender_confidence, face.race, face.race_confidence,
                              np.zeros(2), np.zeros(5))
        return f"{face.index + 1}: {format_label(pred)}"
    age = f"{fix['age']}y*" if "age" in fix else f"{face.age:.0f}y"
    gender = f"{fix['gender']}*" if "gender" in fix else f"{face.gender} {100 * face.gender_confidence:.0f}%"
    race = f"{fix['race']}*" if "race" in fix else f"{face.race} {100 * face.race_confidence:.0f}%"
    return f"{face.index + 1}: {age} {gender} | {race}"


def draw(image_bgr: np.ndarray, faces: list[Face], corrections: dict[int, dict]) -> np.ndarray:
    """A copy of the photo with every face boxed, numbered and labelled (corrections applied)."""
    out = image_bgr.copy()
    for face in faces:
        draw_face(out, face.box, face_label(face, corrections.get(face.index)))
    return out


def process_upload(store: Store, pipeline: FacePipeline, session: str, upload_id: str, data: bytes,
                   name: str) -> None:
    """Decode (checked already), detect, align, predict and store one photo with its faces.
    Raises ``InputError`` (the photo) or ``StorageError`` (the data folder); then nothing of it
    is stored: the files written so far are removed."""
    raw_name, raw_path = store.new_file(".jpg")  # the bytes as sent, named by a random id, read once
    try:
        raw_path.write_bytes(data)
    except OSError as exc:
        raise StorageError(f"the photo cannot be written into the data folder ({exc.strerror or exc})") from None
    try:
        image = read_image(raw_path)
    except InputError as exc:
        raise InputError(str(exc).replace(str(raw_path), name)) from None
    finally:
        store.remove_files([raw_name])
    crops = pipeline.crops(image)
    preds = pipeline.predict(crops) if crops else []
    faces: list[Face] = []
    written: list[str] = []
    try:
        for i, (crop, pred) in enumerate(zip(crops, preds, strict=True)):
            crop_name, crop_path = store.new_file(".jpg")
            written.append(crop_name)
            _write_jpeg(crop_path, cv2.cvtColor(crop.image, cv2.COLOR_RGB2BGR), 95)
            d = crop.detection
            faces.append(Face(i, (int(d.x), int(d.y), int(d.w), int(d.h)), round(float(pred.age), 1), pred.gender,
                              pred.race, round(float(pred.gender_confidence), 4),
                              round(float(pred.race_confidence), 4), bool(crop.aligned), crop_name))
        original, original_path = store.new_file(".jpg")
        written.append(original)
        _write_jpeg(original_path, image)
        annotated, annotated_path = store.new_file(".jpg")
        written.append(annotated)
        _write_jpeg(annotated_path, draw(image, faces, {}))
        h, w = image.shape[:2]
        store.add_upload(session, upload_id, (w, h), original, annotated, faces)
    except BaseException:
        store.remove_files(written)
        raise


def correct_face(store: Store, session: str, upload: dict, index: int, values: dict) -> dict:
    """Apply ``values`` (age, gender, race; None clears one) to face ``index``'s correction: the
    photo is drawn again with it into a new file, then the correction and that file are stored
    together. Returns the face's correction. Raises ``StorageError``; then nothing changed (the
    database still names the old drawing, which is still there)."""
    fix = store.merged(upload["corrections"].get(index, {}), values)
    path = store.file_path(upload["original"])
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path is not None else None
    if image is None:
        raise StorageError(f"upload {upload['id']}: its photo is missing from the data folder")
    name, out = store.new_file(".jpg")
    _write_jpeg(out, draw(image, upload["faces"], {**upload["corrections"], index: fix}))
    try:
        store.save_correction(session, upload["id"], index, fix, name)
    except BaseException:
        store.remove_files([name])
        raise
    return fix
