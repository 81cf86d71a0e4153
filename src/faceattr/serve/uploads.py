"""The uploads service: a session's photos, their faces and the corrections, as the JSON the
API answers (no HTTP here: a session id in, dicts out, :class:`~faceattr.serve.errors.ApiError`
for a request at fault, ``StorageError`` for the data folder).

An upload is checked (bytes, pixels from the header alone, a decodable image) before anything
is stored, then goes through the face pipeline (``photos.process_upload``). A correction is a
subset of ``{"age": int, "gender": ..., "race": ...}`` (``null`` clears that field), checked by
:func:`validate_label`, then drawn and stored (``photos.correct_face``).
"""

from __future__ import annotations

import re
from typing import Any

from faceattr.errors import FaceAttrError, InputError
from faceattr.inference.pipeline import FacePipeline
from faceattr.labels import AGE_RANGE, GENDERS, RACES
from faceattr.serve.errors import ApiError
from faceattr.serve.guards import clipped, shown
from faceattr.serve.jobs import correction_rows, labels_csv
from faceattr.serve.photos import TooLarge, check_upload, correct_face, process_upload
from faceattr.serve.store import UPLOAD_ID, StorageError, Store, new_id

#: A face's index as a path segment: a few digits.
FACE_INDEX = re.compile(r"[0-9]{1,6}")


def validate_label(body: Any) -> dict[str, Any]:
    """A correction ``{"age": int, "gender": ..., "race": ...}`` (any non-empty subset; ``null``
    clears that field's correction), checked; raises ``ApiError(422)`` naming the field at fault."""
    if not isinstance(body, dict) or not body:
        raise ApiError(422, "body: expected a JSON object with one or more of age, gender, race")
    unknown = sorted(set(body) - {"age", "gender", "race"})
    if unknown:
        raise ApiError(422, f"{clipped(str(unknown[0]))}: unknown field (expected age, gender or race)")
    out: dict[str, Any] = {}
    if "age" in body and body["age"] is None:
        out["age"] = None
    elif "age" in body:
        age = body["age"]
        if isinstance(age, bool) or not isinstance(age, int) or not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
            raise ApiError(422, f"age: {shown(age)} is not allowed: expected a whole number of years from "
                                f"{AGE_RANGE[0]:g} to {AGE_RANGE[1]:g}")
        out["age"] = int(age)
    for key, names in (("gender", GENDERS), ("race", RACES)):
        if key in body and body[key] is None:
            out[key] = None
        elif key in body:
            if body[key] not in names:
                raise ApiError(422, f"{key}: {shown(body[key])} is not allowed: expected one of {', '.join(names)}")
            out[key] = body[key]
    return out


def upload_json(up: dict[str, Any], with_corrections: bool) -> dict[str, Any]:
    """An upload (``Store.upload``) as the API answers it: its id, annotated image's URL, size in
    pixels and faces (box (x, y, w, h) in pixels, prediction, crop URL); with its corrections
    (by face index, as a string) when ``with_corrections``."""
    out = {"id": up["id"], "image_url": f"/files/{up['annotated']}", "width": up["width"],
           "height": up["height"],
           "faces": [{"index": f.index, "box": list(f.box), "age": f.age, "gender": f.gender, "race": f.race,
                      "gender_confidence": f.gender_confidence, "race_confidence": f.race_confidence,
                      "aligned": f.aligned, "crop_url": f"/files/{f.crop}"} for f in up["faces"]]}
    if with_corrections:
        out["corrections"] = {str(k): v for k, v in up["corrections"].items()}
    return out


class Uploads:
    """Uploads of sessions in ``store``, labelled by ``pipeline``; an upload is at most
    ``max_bytes`` bytes and ``max_pixels`` pixels."""

    def __init__(self, store: Store, pipeline: FacePipeline, max_bytes: int, max_pixels: int) -> None:
        self.store = store
        self.pipeline = pipeline
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    def add(self, sid: str, name: str, data: bytes) -> dict[str, Any]:
        """Check, label and store the photo ``data`` (file name ``name``) for session ``sid``;
        its JSON. ``ApiError`` 413 (too large) or 422 (not a usable photo)."""
        try:
            check_upload(data, name, self.max_bytes, self.max_pixels)
        except TooLarge as exc:
            raise ApiError(413, str(exc)) from None
        except InputError as exc:
            raise ApiError(422, str(exc)) from None
        upload_id = new_id()
        try:
            process_upload(self.store, self.pipeline, sid, upload_id, data, name)
        except StorageError:
            raise
        except FaceAttrError as exc:
            raise ApiError(422, str(exc)) from None
        up = self.store.upload(sid, upload_id)
        assert up is not None
        return upload_json(up, False)

    def listing(self, sid: str | None) -> list[dict[str, Any]]:
        """The session's uploads (none without a session)."""
        return self.store.uploads(sid) if sid else []

    def owned(self, sid: str, upload_id: str) -> dict[str, Any]:
        """Upload ``upload_id`` of session ``sid`` (``Store.upload``); ``ApiError(404)`` when the
        session has no such upload."""
        up = self.store.upload(sid, upload_id) if UPLOAD_ID.fullmatch(upload_id) else None
        if up is None:
            raise ApiError(404, f"upload {clipped(upload_id)}: not found")
        return up

    @staticmethod
    def face_index(up: dict[str, Any], index: str) -> int:
        """``index`` (a path segment) as the number of one of the upload's faces; ``ApiError(404)`` otherwise."""
        if not FACE_INDEX.fullmatch(index) or int(index) >= len(up["faces"]):
            raise ApiError(404, f"upload {up['id']}: no face {clipped(index)}")
        return int(index)

    def correct(self, sid: str, up: dict[str, Any], index: int, values: dict[str, Any]) -> dict[str, Any]:
        """Apply the checked correction ``values`` to face ``index`` of upload ``up``; the face's
        index, its correction and the upload's JSON with its corrections."""
        fix = correct_face(self.store, sid, up, index, values)
        again = self.store.upload(sid, up["id"])
        if again is None:
            raise ApiError(404, f"upload {up['id']}: not found")
        return {"index": index, "correction": fix, **upload_json(again, True)}

    def corrections_csv(self, sid: str | None) -> str:
        """The session's corrected faces as ``labels.csv`` text (the header only without a session)."""
        return labels_csv(correction_rows(self.store, sid) if sid else [])
