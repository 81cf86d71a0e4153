"""Turning ``--img`` arguments into image files, and reading them robustly.

``expand_inputs`` accepts files, folders and glob patterns; ``read_image`` decodes any image
OpenCV can (grayscale, alpha, 16-bit, EXIF-rotated JPEG) into 8-bit BGR and raises a one-line
``InputError`` for a missing, empty, truncated or non-image file.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import cv2
import numpy as np

from faceattr.errors import InputError

log = logging.getLogger(__name__)

#: Suffixes (lower case) taken from a folder; a file named explicitly is tried whatever its suffix.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                            ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".sr", ".ras"})
_GLOB_CHARS = set("*?[")
JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
PNG_SIGNATURE, PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND"


def _is_glob(item: str) -> bool:
    return any(c in _GLOB_CHARS for c in item)


def _folder_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        log.warning("%s: folder holds no image files", folder)
    return files


def expand_inputs(items: list[str]) -> list[Path]:
    """Image paths named by ``items``, in the order given, each at most once.

    - a file: taken as is, whatever its suffix (``read_image`` reports it if it isn't an image);
    - a folder: its image files (by suffix, see ``IMAGE_SUFFIXES``), sorted by name, hidden files
      skipped; *not* recursive, so a folder of results next to the inputs isn't swept in — use a
      recursive glob (``'photos/**/*.jpg'``) to descend;
    - a glob pattern (``*``, ``?``, ``[``; ``**`` recurses): the matching files, sorted.

    An item that doesn't exist (or a pattern that matches nothing) is kept in the list as its
    own path, so the caller reports it in order through ``read_image`` like any bad file.
    """
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve() if p.exists() else p.absolute()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for item in items:
        item = str(item)
        p = Path(item).expanduser()
        if p.is_dir():
            for f in _folder_images(p):
                add(f)
        elif p.exists() or not _is_glob(item):
            add(p)  # a file, or a missing path that read_image will report
        else:
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
            if not matches:
                add(p)  # reported by read_image as "pattern matches no file"
            for m in matches:
                add(m)
    return out


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether a JPEG's main image reaches its end-of-image marker.

    The header segments (EXIF with its own thumbnail JPEG inside, tables) are skipped by their
    lengths up to the first start-of-scan; after that, 0xFF in the scan data is always byte-
    stuffed, so an ``FF D9`` found there is the main image's end (trailers after it are fine).
    """
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan
            return JPEG_EOI in data[i:]
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False


def _to_bgr8(img: np.ndarray) -> np.ndarray:
    """Any decoded image (1-4 channels, 8/16-bit or float) -> (H, W, 3) uint8 BGR."""
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)  # 65535 -> 255
    elif img.dtype in (np.float32, np.float64):
        scale = 255.0 if float(np.nanmax(img)) <= 1.0 else 1.0  # float TIFF/EXR in [0, 1] or [0, 255]
        img = np.clip(np.nan_to_num(img) * scale, 0, 255).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if channels == 2:  # gray + alpha
        return _composite(cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR), img[:, :, 1])
    if channels == 4:
        return _composite(img[:, :, :3], img[:, :, 3])
    return img[:, :, :3]


def _composite(bgr: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite over white, as image viewers show transparency (transparent pixels often hold black)."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    return (bgr.astype(np.float32) * a + 255.0 * (1.0 - a)).round().astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 BGR.

    Grayscale becomes 3-channel, alpha is composited over white, 16-bit and float images are
    scaled to 8 bits, and JPEGs are turned upright by their EXIF orientation (OpenCV does this
    for ``IMREAD_COLOR``; other formats' EXIF orientation is ignored). Bytes are read by Python
    and decoded in memory, so non-ASCII paths work everywhere.

    Raises ``InputError("<path>: <problem>")`` for a missing file, a folder, an empty file, a
    truncated JPEG/PNG or anything OpenCV cannot decode.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {'pattern matches no file' if _is_glob(str(path)) else 'no such file'}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise InputError(f"{path}: empty file")
    # Older OpenCV versions decode a truncated file into a partly grey image without an error.
    if data.startswith(JPEG_SOI) and not _jpeg_is_complete(data):
        raise InputError(f"{path}: truncated JPEG (the image data ends early)")
    if data.startswith(PNG_SIGNATURE) and PNG_IEND not in data[-64:]:
        raise InputError(f"{path}: truncated PNG (no end chunk)")
    buf = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_COLOR applies EXIF orientation (JPEG has no alpha or 16-bit to lose); other
    # formats are decoded unchanged so alpha and bit depth are handled here, not truncated.
    flags = cv2.IMREAD_COLOR if data.startswith(JPEG_SOI) else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise InputError(f"{path}: not an image or unreadable")
    return np.ascontiguousarray(_to_bgr8(img))
