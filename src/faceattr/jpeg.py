"""JPEG byte checks without decoding: shared by the data step (a truncated UTKFace file) and
``run`` (a truncated photo), so both refuse the same files."""

from __future__ import annotations

#: The start- and end-of-image markers.
JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


def jpeg_is_complete(data: bytes) -> bool:
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
