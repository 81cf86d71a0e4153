"""Unlabelled photos and videos -> face crops, through the face pipeline ``run`` uses.

``distill.unlabeled`` lists folders of photos, single photos and video files. Faces are
detected and aligned by ``inference.FacePipeline`` (the detector's video settings for videos,
as ``run --video``); a video is searched on every ``distill.video_stride``-th frame, and a face
that overlaps a face of the previous searched frame (box IoU >= ``distill.dedup_iou``) and looks
the same (mean absolute difference of 32x32 grey crops < ``distill.dedup_threshold``, 0-255)
counts once. A photo whose bytes are those of an image in the teacher's validation or test
split is refused before detection. Nothing here stops at a bad file: an unreadable photo or
video, a missing path or a file without faces becomes a record with the reason.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from faceattr.errors import InputError
from faceattr.inference.images import IMAGE_SUFFIXES, expand_inputs, read_image
from faceattr.inference.pipeline import FaceCrop, FacePipeline
from faceattr.inference.tracking import iou

log = logging.getLogger(__name__)

#: Suffixes (lower case) of the video files taken from a folder; a file named directly is tried
#: as a video whatever its suffix, unless it is a photo's.
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
#: Side of the grey thumbnails compared to tell near-identical video faces apart (pixels).
THUMB = 32

# Reasons a record is not used (``FaceRecord.reason``); "kept" when it is.
KEPT = "kept"
HELD_OUT = "content of an image in the teacher's {split} split"
DUPLICATE = "near-duplicate of frame {frame}"
NO_FACE = "no face found"


@dataclass
class FaceRecord:
    """One face (or one file without a usable face) from an unlabelled source.

    ``chip``: (S, S, 3) uint8 RGB at the teacher's input size, or None when there is no face.
    ``frame``: the video frame index (None for photos). ``box``: (x, y, w, h) pixels.
    ``reason``: ``kept`` or why the face is not used; the teacher's step may change it.
    """

    source: str
    frame: int | None = None
    face: int | None = None
    box: tuple[int, int, int, int] | None = None
    aligned: bool | None = None
    chip: np.ndarray | None = field(default=None, repr=False)
    reason: str = KEPT

    @property
    def kept(self) -> bool:
        return self.reason == KEPT


def file_sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _thumb(chip: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(np.ascontiguousarray(chip), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


def is_video(path: Path) -> bool:
    """A file that is not a photo by its suffix is tried as a video."""
    return path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES


def _records(source: str, crops: list[FaceCrop], frame: int | None = None) -> list[FaceRecord]:
    return [FaceRecord(source, frame, i, tuple(int(v) for v in c.detection.box), bool(c.aligned), c.image)
            for i, c in enumerate(crops)]


class SourceReader:
    """Turns ``distill.unlabeled`` entries into ``FaceRecord``s.

    ``photos``/``videos``: face pipelines for still images and for video frames (the detector's
    ``video`` settings); ``held_out``: sha256 -> split name of the teacher's val/test images.
    """

    def __init__(self, photos: FacePipeline, videos: FacePipeline, held_out: dict[str, str], *, stride: int,
                 dedup_iou: float, dedup_threshold: float) -> None:
        self.photos = photos
        self.videos = videos
        self.held_out = held_out
        self.stride = int(stride)
        self.dedup_iou = float(dedup_iou)
        self.dedup_threshold = float(dedup_threshold)

    def read(self, entries: Sequence[str]) -> Iterator[tuple[str, list[FaceRecord]]]:
        """For each entry of ``distill.unlabeled``: (entry, its records), in order."""
        for entry in entries:
            path = Path(str(entry)).expanduser()
            if path.is_dir():
                yield entry, self.read_folder(path)
            elif not path.exists():
                yield entry, [FaceRecord(str(entry), reason="no such file or folder")]
            elif is_video(path):
                yield entry, self.read_video(path)
            else:
                yield entry, self.read_photos([path])

    def read_folder(self, folder: Path) -> list[FaceRecord]:
        """Every photo of ``folder`` (not recursive, as ``run --img``) and every video file in it
        (by suffix, ``VIDEO_SUFFIXES``); other files are left alone."""
        photos = expand_inputs([str(folder)])
        videos = sorted(p for p in folder.iterdir()
                        if not p.name.startswith(".") and p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        records = self.read_photos(photos) if photos else []
        for video in videos:
            records += self.read_video(video)
        return records

    def read_photos(self, paths: Sequence[Path]) -> list[FaceRecord]:
        out: list[FaceRecord] = []
        for path in tqdm(paths, desc="unlabelled photos", unit="img", disable=len(paths) < 2):
            try:
                data = path.read_bytes()
            except OSError as exc:
                out.append(FaceRecord(str(path), reason=f"unreadable: {exc.strerror or exc}"))
                continue
            split = self.held_out.get(file_sha256_bytes(data))
            if split is not None:
                out.append(FaceRecord(str(path), reason=HELD_OUT.format(split=split)))
                log.warning("%s: refused, its content is an image of the teacher's %s split", path, split)
                continue
            try:
                image = read_image(path)
            except InputError as exc:
                out.append(FaceRecord(str(path), reason=f"unreadable: {str(exc).split(': ', 1)[-1]}"))
                log.warning("%s", exc)
                continue
            records = _records(str(path), self.photos.crops(image))
            out += records or [FaceRecord(str(path), reason=NO_FACE)]
        return out

    def read_video(self, path: Path) -> list[FaceRecord]:
        """Faces on every ``stride``-th frame (0, stride, 2*stride...), near-duplicates marked."""
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            log.warning("%s: cannot be opened as a video", path)
            return [FaceRecord(str(path), reason="unreadable: cannot be opened as a video")]
        out: list[FaceRecord] = []
        previous: list[tuple[FaceRecord, np.ndarray]] = []  # faces of the last searched frame, and thumbnails
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        index = 0
        with tqdm(total=frames, desc=f"video {path.name}", unit="frame") as bar:
            while True:
                ok = cap.grab()
                if not ok:
                    break
                if index % self.stride == 0:
                    ok, frame = cap.retrieve()
                    if ok and frame is not None:
                        previous = self._video_frame(str(path), index, frame, previous, out)
                index += 1
                bar.update(1)
        cap.release()
        if index == 0:
            return [FaceRecord(str(path), reason="unreadable: no frames could be decoded")]
        if not out:
            out.append(FaceRecord(str(path), reason=NO_FACE))
        return out

    def _video_frame(self, source: str, index: int, frame: np.ndarray,
                     previous: list[tuple[FaceRecord, np.ndarray]], out: list[FaceRecord]
                     ) -> list[tuple[FaceRecord, np.ndarray]]:
        current = []
        for record in _records(source, self.videos.crops(frame), index):
            thumb = _thumb(record.chip)
            same = next((prev for prev, prev_thumb in previous
                         if iou(prev.box, record.box) >= self.dedup_iou
                         and float(np.mean(np.abs(prev_thumb - thumb))) < self.dedup_threshold), None)
            if same is not None:
                # The earlier face stands for this one; it stays the reference, so a slow drift
                # still yields a new sample once it has moved far enough.
                record.reason = DUPLICATE.format(frame=same.frame)
                record.chip = None  # never labelled nor used
                current.append((same, _thumb(same.chip)))
            else:
                current.append((record, thumb))
            out.append(record)
        return current
