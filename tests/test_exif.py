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


@pytest.mark.parametrize("orientation", range(1, 9))
def test_torch_version_turns_the_same_way(orientation: int) -> None:
    torch = pytest.importorskip("torch")
    from facedet_server.image.nvjpeg import upright_chw

    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    turned = upright_chw(torch.from_numpy(stored).permute(2, 0, 1), orientation).permute(1, 2, 0)
    np.testing.assert_array_equal(turned.numpy(), upright(stored, orientation))


def test_photos_are_stored_so_that_viewers_show_them_upright() -> None:
    from exif_photos import stored_jpeg
    from facedet_test_support import image_bytes

    upright_jpeg = image_bytes("zidane.jpg")
    viewed = np.asarray(Image.open(io.BytesIO(stored_jpeg(upright_jpeg, 1))))
    for orientation in range(2, 9):
        data = stored_jpeg(upright_jpeg, orientation)
        assert jpeg_orientation(data) == orientation
        shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
        assert shown.shape == viewed.shape
        # Lossy re-encoding of turned pixels: close, not equal.
        assert float(np.abs(shown.astype(np.int16) - viewed.astype(np.int16)).mean()) < 3.0
