"""EXIF orientation: how a camera says its stored pixels must be turned to be seen upright.

Phones store portrait photos as landscape pixels with orientation 6 ("rotate 90 degrees
clockwise to view"); every browser and viewer applies it, so a client expects boxes in the
upright picture. The values are those of the EXIF/TIFF tag 0x0112: 1 upright, 2 mirrored, 3 turned
180, 4 flipped, 5 transposed, 6 turned 90 clockwise, 7 transversed, 8 turned 90 counter-clockwise.
Only the JPEG header is read (APP1 "Exif" segment, IFD0), never the pixels.
"""

from __future__ import annotations

import struct

import numpy as np

UPRIGHT = 1
ORIENTATION_TAG = 0x0112
# Orientations that exchange width and height.
TRANSPOSING = frozenset({5, 6, 7, 8})


def jpeg_orientation(data: bytes | memoryview) -> int:
    """The EXIF orientation of a JPEG (1..8), or 1 where there is none or it is unreadable: a
    broken EXIF block must not fail an image that decodes."""
    view = memoryview(data)
    if bytes(view[:2]) != b"\xff\xd8":
        return UPRIGHT
    offset = 2
    while offset + 4 <= len(view):
        if view[offset] != 0xFF:
            return UPRIGHT
        marker = view[offset + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no metadata after this
            return UPRIGHT
        (length,) = struct.unpack_from(">H", view, offset + 2)
        if length < 2:
            return UPRIGHT
        segment = view[offset + 4 : offset + 2 + length]
        if marker == 0xE1 and bytes(segment[:6]) == b"Exif\x00\x00":
            return _tiff_orientation(segment[6:])
        offset += 2 + length
    return UPRIGHT


def _tiff_orientation(tiff: memoryview) -> int:
    if len(tiff) < 8:
        return UPRIGHT
    order = bytes(tiff[:2])
    if order not in (b"II", b"MM"):
        return UPRIGHT
    endian = "<" if order == b"II" else ">"
    (ifd,) = struct.unpack_from(endian + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return UPRIGHT
    (count,) = struct.unpack_from(endian + "H", tiff, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            return UPRIGHT
        tag, kind, _, value = struct.unpack_from(endian + "HHI4s", tiff, entry)
        if tag == ORIENTATION_TAG and kind == 3:  # SHORT, stored in the first two bytes
            (orientation,) = struct.unpack_from(endian + "H", value)
            return orientation if 1 <= orientation <= 8 else UPRIGHT
    return UPRIGHT


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) of the picture as viewed."""
    return (height, width) if orientation in TRANSPOSING else (width, height)


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(h, w, c) stored pixels -> the upright picture (a view where NumPy allows; callers that
    need contiguous memory copy)."""
    if orientation in (2, 4, 5, 7):  # the mirrored ones: flip first, then turn as 1, 3, 8, 6
        pixels = pixels[:, ::-1]
        orientation = {2: 1, 4: 3, 5: 8, 7: 6}[orientation]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 6:  # turned 90 clockwise to view
        return np.rot90(pixels, k=-1)
    if orientation == 8:
        return np.rot90(pixels, k=1)
    return pixels
