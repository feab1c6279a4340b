"""An image file -> bytes the server decodes: JPEG and PNG as they are, other formats re-encoded.

The server takes JPEG and PNG only. A file in another format (BMP, TIFF, WebP, GIF, ...) is
decoded here with OpenCV and re-encoded, never sent as raw pixels: a 27 MB BMP as raw pixels is
over the server's message limit, as a JPEG it is a few MB. Every failure is an INVALID_ARGUMENT
`FaceDetectorError` naming the file, raised before any call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facedet.client.errors import FaceDetectorError, invalid_file
from facedet.client.optional import MissingDependency, opencv

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Only for naming a format in messages; OpenCV is tried on anything that is not JPEG or PNG.
_OTHER_MAGIC = (
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
)
# Up to this many bytes of pixels, PNG: lossless, and it cannot grow much past the pixels, so it
# stays well under the server's default 16 MiB message limit. Larger images go as JPEG at
# quality 95, which the network (seeing the image at 640 pixels) cannot tell from the original.
PNG_MAX_PIXEL_BYTES = 8 * 1024 * 1024
JPEG_QUALITY = 95


def read_image_file(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes, or INVALID_ARGUMENT naming the file: missing, a folder, unreadable, empty."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise invalid_file(path, "no such file") from None
    except IsADirectoryError:
        raise invalid_file(path, "is a folder, not an image file") from None
    except OSError as exc:
        raise invalid_file(path, f"cannot read it ({exc.strerror or exc})") from None
    if not data:
        raise invalid_file(path, "the file is empty (0 bytes)")
    return data


def server_format(data: bytes) -> str | None:
    """The format name, "JPEG" or "PNG", when the server decodes these bytes itself, else None."""
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data.startswith(PNG_MAGIC):
        return "PNG"
    return None


def format_name(data: bytes) -> str | None:
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _OTHER_MAGIC if data.startswith(magic)), server_format(data))


def encoded_image_file(path: str | os.PathLike[str]) -> bytes:
    """What to send for the image file at `path`: its bytes when JPEG or PNG, else its pixels
    re-encoded (needs OpenCV)."""
    data = read_image_file(path)
    if server_format(data) is not None:
        return data
    name = format_name(data)
    try:
        cv2 = opencv(f"sending a {name or 'non-JPEG/PNG'} file (the server takes JPEG or PNG)")
    except MissingDependency as exc:
        raise invalid_file(path, str(exc)) from None
    pixels = decode(cv2, data)
    if pixels is None:
        what = f"{name} data is corrupt or truncated" if name else "not an image (neither JPEG nor PNG)"
        raise invalid_file(path, f"{what}: OpenCV cannot decode it (first bytes {data[:8].hex(' ')})")
    return reencode(cv2, pixels, path)


def imread_flags(cv2: Any, data: bytes) -> int:
    # The server applies a JPEG's EXIF orientation (by default) and takes other formats'
    # pixels as stored; decoding here does the same, so drawn boxes land on the faces.
    if data[:3] == b"\xff\xd8\xff":
        return int(cv2.IMREAD_COLOR)
    return int(cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


def decode(cv2: Any, data: bytes) -> Any:
    """HxWx3 BGR pixels of encoded `data`, or None where OpenCV cannot decode it."""
    import numpy as np  # OpenCV brings it

    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), imread_flags(cv2, data))
    except cv2.error:
        return None
    return decoded if isinstance(decoded, np.ndarray) and decoded.size else None


def reencode(cv2: Any, pixels: Any, path: object = "image") -> bytes:
    """HxWx3 BGR pixels as PNG (small images) or JPEG at JPEG_QUALITY (large ones)."""
    if pixels.nbytes <= PNG_MAX_PIXEL_BYTES:
        # Level 1: about 13% larger than level 9 on a photo, some 14 times faster.
        ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise FaceDetectorError("INVALID_ARGUMENT", f"{path}: OpenCV could not re-encode it")
    return bytes(encoded.tobytes())
