"""Bytes -> RGB image: JPEG through libjpeg-turbo (simplejpeg), PNG through OpenCV, raw frames.

Every limit is checked from the header before any pixel is decoded. Large JPEGs are decoded
straight to a reduced size with libjpeg-turbo's DCT scaling (a scale of M/8), which is both
faster and no worse for a network that sees the image at 640 pixels anyway; `DecodedImage`
records the exact scale so coordinates map back to the original pixels.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from facedet_server.errors import InvalidImage
from facedet_server.image.exif import TRANSPOSING, UPRIGHT, jpeg_orientation, upright, upright_size
from facedet_server.image.jpeg_scans import check_scans
from facedet_server.image.png_data import check_png_data

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_OTHER_FORMATS = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"RIFF": "RIFF/WebP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
CHANNELS = {"RGB8": 3, "BGR8": 3, "GRAY8": 1}


@dataclass(frozen=True)
class DecodedImage:
    """RGB pixels, possibly reduced, plus the size of the image as the client sent it."""

    pixels: np.ndarray  # (h, w, 3) uint8, RGB, C-contiguous
    width: int  # original width in pixels
    height: int  # original height in pixels
    # Original pixels per decoded pixel along each axis (1.0 when not reduced).
    scale_x: float = 1.0
    scale_y: float = 1.0


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImage(
            f"image is {width}x{height} = {width * height / 1e6:.1f} Mpx, over the server limit of "
            f"{max_pixels / 1e6:.1f} Mpx"
        )


def dct_scale_for(width: int, height: int, target_w: int, target_h: int) -> int:
    """Numerator M of the largest reduction M/8 (M in 1..8) that keeps the image at least as
    large as it will be after letterboxing to target_w x target_h; 8 means no reduction."""
    ratio = min(target_w / width, target_h / height)
    if ratio >= 0.5:
        return 8  # the gain below 2x does not pay for the extra resampling step
    for m in range(1, 9):
        if width * m / 8 >= width * ratio and height * m / 8 >= height * ratio:
            return m
    return 8


def decode_jpeg(
    data: bytes, max_pixels: int, target: tuple[int, int] | None = None, orient: bool = True
) -> DecodedImage:
    """Decode a JPEG; `target` (width, height) allows DCT-scaled decoding down towards it. With
    `orient`, the pixels (and the size reported) are the upright picture its EXIF orientation
    describes, as every viewer shows it."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise InvalidImage(f"JPEG header is unreadable: {exc}") from None
    check_pixels(width, height, max_pixels)
    check_scans(data, width, height)
    orientation = jpeg_orientation(data) if orient else UPRIGHT
    if target and orientation in TRANSPOSING:  # the target is upright; the stored pixels are not
        target = (target[1], target[0])
    m = dct_scale_for(width, height, *target) if target else 8
    out_w, out_h = math.ceil(width * m / 8), math.ceil(height * m / 8)
    try:
        if colorspace == "CMYK":
            pixels = _cmyk_to_rgb(
                simplejpeg.decode_jpeg(data, colorspace="CMYK", min_width=out_w, min_height=out_h)
            )
        else:
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=out_w, min_height=out_h)
    except ValueError as exc:
        raise InvalidImage(f"JPEG data is corrupt or truncated: {exc}") from None
    dh, dw = pixels.shape[:2]
    if (dw, dh) != (out_w, out_h):
        # libjpeg-turbo chose another factor than ours; recover it from the size it produced.
        m = round(dw * 8 / width)
    if orientation != UPRIGHT:
        pixels = np.ascontiguousarray(upright(pixels, orientation))
        width, height = upright_size(width, height, orientation)
    return DecodedImage(pixels, width, height, scale_x=8 / m, scale_y=8 / m)


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    # Adobe CMYK JPEGs store inverted ink values, so the product form needs no 255 - x.
    c, m, y, k = (cmyk[..., i].astype(np.uint16) for i in range(4))
    return np.ascontiguousarray(
        np.stack([c * k // 255, m * k // 255, y * k // 255], axis=-1).astype(np.uint8)
    )


def png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidImage("PNG header is truncated or has no IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# Chunks a PNG may have: an image's data comes in IDAT chunks of usually 8 KiB or more, but
# 1.3 million empty chunks fit in a 16 MiB message and cost OpenCV 7 s and libpng a stderr
# warning each (facedet_bench.hostile.png_with_many_chunks).
MAX_PNG_CHUNKS = 100_000
MAX_PNG_ANCILLARY_CHUNKS = 1_000  # text, colour profiles, timestamps: a few in a normal file


def check_png_chunks(data: bytes) -> None:
    """Refuse a PNG whose chunk lengths run past its end, or with more chunks than any real
    image needs. OpenCV's decoder allocates what a chunk header claims before it finds the data
    short: a 110-byte request claiming a 4 GB chunk made it take 4 GB (found by the request
    fuzzer, facedet_bench.fuzz_request)."""
    offset = len(PNG_MAGIC)
    chunks = ancillary = 0
    while offset + 8 <= len(data):
        chunks += 1
        ancillary += data[offset + 4] & 0x20 != 0  # a lowercase first letter: ancillary
        if chunks > MAX_PNG_CHUNKS or ancillary > MAX_PNG_ANCILLARY_CHUNKS:
            raise InvalidImage(
                f"PNG has more than {MAX_PNG_CHUNKS} chunks or {MAX_PNG_ANCILLARY_CHUNKS} ancillary "
                "chunks; the server refuses it as malformed"
            )
        (length,) = struct.unpack_from(">I", data, offset)
        end = offset + 12 + length  # length, type, the data, CRC
        if end > len(data):
            raise InvalidImage(
                f"PNG data is corrupt or truncated: the chunk at byte {offset} claims {length} bytes, "
                f"past the end of the image ({len(data)} bytes)"
            )
        if data[offset + 4 : offset + 8] == b"IEND":
            return
        offset = end


def decode_png(data: bytes, max_pixels: int) -> DecodedImage:
    width, height = png_size(data)
    check_pixels(width, height, max_pixels)
    check_png_chunks(data)
    check_png_data(data)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidImage("PNG data is corrupt or truncated")
    return DecodedImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), width, height)


def decode_encoded(
    data: bytes, max_pixels: int, target: tuple[int, int] | None = None, orient: bool = True
) -> DecodedImage:
    """Sniff the format from the magic bytes and decode; anything else is INVALID_ARGUMENT.
    `orient`: apply a JPEG's EXIF orientation (see decode_jpeg)."""
    if not data:
        raise InvalidImage("image.encoded is empty")
    if data.startswith(JPEG_MAGIC):
        return decode_jpeg(data, max_pixels, target, orient)
    if data.startswith(PNG_MAGIC):
        return decode_png(data, max_pixels)
    for magic, name in _OTHER_FORMATS.items():
        if data.startswith(magic):
            raise InvalidImage(f"{name} images are not supported; send JPEG, PNG or a raw frame")
    raise InvalidImage(
        f"image.encoded is not a JPEG or PNG (first bytes {data[:8].hex(' ')}); send JPEG, PNG or a raw frame"
    )


def decode_raw(width: int, height: int, pixel_format: str, data: bytes, max_pixels: int) -> DecodedImage:
    """Validate a raw frame (RGB8, BGR8 or GRAY8) and return it as RGB."""
    if pixel_format not in CHANNELS:
        raise InvalidImage(f"raw.format {pixel_format} is not supported; use RGB8, BGR8 or GRAY8")
    check_pixels(width, height, max_pixels)
    channels = CHANNELS[pixel_format]
    expected = width * height * channels
    if len(data) != expected:
        raise InvalidImage(
            f"raw.data has {len(data)} bytes but {width}x{height} {pixel_format} needs "
            f"{width}*{height}*{channels} = {expected}"
        )
    array = np.frombuffer(data, np.uint8).reshape(height, width, channels)
    pixels: np.ndarray
    if pixel_format == "RGB8":
        pixels = array
    elif pixel_format == "BGR8":
        pixels = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    else:
        pixels = cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    return DecodedImage(pixels, width, height)
