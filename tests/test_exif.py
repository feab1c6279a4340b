"""EXIF orientation read from the JPEG header and applied to pixels, against Pillow's
`ImageOps.exif_transpose` (what viewers do) for all eight orientations."""

from __future__ import annotations

import io

import numpy as np
import pytest
from facedet_server.image.exif import jpeg_orientation, upright, upright_size
from PIL import Image, ImageOps


def _jpeg(pixels: np.ndarray, orientation: int | None) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(out, "JPEG", exif=exif.tobytes(), quality=100)
    return out.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_matches_pillow(orientation: int) -> None:
    stored = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    data = _jpeg(stored, orientation)
    assert jpeg_orientation(data) == orientation
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    viewed = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(upright(decoded, orientation), viewed)
    assert upright_size(10, 6, orientation) == (viewed.shape[1], viewed.shape[0])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff\xff\x7f",  # IFD offset past the end
        b"\xff\xd8\xff\xe1\x00\x01",  # segment length below 2
        b"\xff\xd8\xff\xe1\x00\x0eExif\x00\x00XX*\x00\x08\x00",  # neither byte order
    ],
)
def test_missing_or_broken_exif_is_upright(data: bytes) -> None:
    assert jpeg_orientation(data) == 1


def test_no_exif_and_out_of_range_values_are_upright() -> None:
    pixels = np.zeros((4, 4, 3), np.uint8)
    assert jpeg_orientation(_jpeg(pixels, None)) == 1
    assert jpeg_orientation(_jpeg(pixels, 9)) == 1
