"""Turning ``--img`` arguments into image files, and reading them robustly.

``expand_inputs`` accepts files, folders and glob patterns; ``read_image`` decodes any image
OpenCV can (grayscale, alpha, 16-bit, EXIF-rotated JPEG and PNG) into 8-bit BGR and raises a
one-line ``InputError`` for a missing, empty, truncated or non-image file, a symbolic link loop
and anything that is not a regular file (a named pipe would block the read forever).
"""

from __future__ import annotations

import errno
import glob
import io
import logging
import os
import stat
from pathlib import Path

import cv2
import numpy as np

from faceattr.errors import InputError
from faceattr.jpeg import JPEG_SOI, jpeg_is_complete

log = logging.getLogger(__name__)

#: Suffixes (lower case) taken from a folder; a file named explicitly is tried whatever its suffix.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                            ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".sr", ".ras"})
#: How files that may hold several frames or pages begin (GIF, TIFF either byte order).
MULTI_FRAME_MAGIC = (b"GIF87a", b"GIF89a", b"II*\0", b"MM\0*")
_GLOB_CHARS = set("*?[")
PNG_SIGNATURE, PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND"
EXIF_ORIENTATION_TAG = 0x0112
#: What each file type is called when it isn't a regular file (``stat.S_IFMT`` -> name).
SPECIAL_FILES = {stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                 stat.S_IFBLK: "a block device"}


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


def frame_count(data: bytes) -> int:
    """Frames (an animated GIF) or pages (a TIFF) in the file ``data``; 1 for other formats or
    when they can't be counted. Reads the file's structure only (Pillow), no pixels of later frames."""
    if not data.startswith(MULTI_FRAME_MAGIC):
        return 1
    try:
        from PIL import Image  # deferred: Pillow, only for multi-frame files

        with Image.open(io.BytesIO(data)) as img:
            return max(1, int(getattr(img, "n_frames", 1)))
    except Exception:  # Pillow missing or the structure unreadable: OpenCV decides below
        return 1


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


def stat_problem(path: Path, exc: OSError) -> str:
    """Why ``os.stat(path)`` failed, in a few words (a loop and a broken link named as such)."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        if os.path.islink(path):
            return f"broken symbolic link (to {os.readlink(path)})"
        return "pattern matches no file" if _is_glob(str(path)) else "no such file"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return f"cannot be read ({exc.strerror or exc})"


def check_regular_file(path: str | Path, what: str = "image") -> None:
    """Raise ``InputError("<path>: <problem>")`` unless ``path`` is a regular file (after links).

    Refused: a missing path, a symbolic link loop or broken link, a folder, and special files
    (named pipe, socket, device), whose read would block forever or never end.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InputError(f"{path}: {stat_problem(path, exc)}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a folder, not {'an' if what[0] in 'aeiou' else 'a'} {what}")
    if not stat.S_ISREG(mode):
        kind = SPECIAL_FILES.get(stat.S_IFMT(mode), "a special file")
        raise InputError(f"{path}: is {kind}, not a regular file")


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag (1-8) of EXIF data (a TIFF header and IFD0); 1 when absent or unreadable."""
    if tiff.startswith(b"Exif\0\0"):  # some writers keep the JPEG APP1 prefix
        tiff = tiff[6:]
    order = {b"II*\0": "little", b"MM\0*": "big"}.get(tiff[:4])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for i in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
        if len(entry) < 12:
            break
        if int.from_bytes(entry[:2], order) != EXIF_ORIENTATION_TAG:
            continue
        kind = int.from_bytes(entry[2:4], order)  # 3: SHORT (as everyone writes it), 4: LONG
        if kind not in (3, 4):
            return 1
        value = int.from_bytes(entry[8:10] if kind == 3 else entry[8:12], order)
        return value if 1 <= value <= 8 else 1
    return 1


def png_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) in a PNG's ``eXIf`` chunk; 1 when it has none.

    Chunks are skipped by their lengths, so only the chunk headers are read.
    """
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"eXIf":
            return _tiff_orientation(data[pos + 8:pos + 8 + length])
        if kind == PNG_IEND:
            break
        pos += 12 + length  # length, type, data, CRC
    return 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image upright by its EXIF orientation (1-8), as OpenCV does for JPEG."""
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(img), -1)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 BGR.

    Grayscale becomes 3-channel, alpha is composited over white, 16-bit and float images are
    scaled to 8 bits, and JPEGs and PNGs are turned upright by their EXIF orientation (OpenCV
    does this for JPEG with ``IMREAD_COLOR``; a PNG's ``eXIf`` chunk is read here; other formats'
    orientation is ignored). Bytes are read by Python and decoded in memory, so non-ASCII paths
    work everywhere.

    Raises ``InputError("<path>: <problem>")`` for a missing file, a symbolic link loop, a
    folder or special file (see ``check_regular_file``), an empty file, a truncated JPEG/PNG or
    anything OpenCV cannot decode.
    """
    path = Path(path)
    check_regular_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise InputError(f"{path}: empty file")
    # Older OpenCV versions decode a truncated file into a partly grey image without an error.
    if data.startswith(JPEG_SOI) and not jpeg_is_complete(data):
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
    frames = frame_count(data)
    if frames > 1:  # said once per file: the others are not looked at
        log.warning("%s: %d frames or pages; only the first is used", path, frames)
    img = _to_bgr8(img)
    if data.startswith(PNG_SIGNATURE):
        img = apply_orientation(img, png_orientation(data))
    return np.ascontiguousarray(img)
