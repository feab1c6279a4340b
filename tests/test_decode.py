"""Decoding: JPEG with DCT scaling (and the map back to the original pixels), PNG, raw frames,
and a clear INVALID_ARGUMENT for everything the server cannot take."""

from __future__ import annotations

import io
import math
import struct

import numpy as np
import pytest
import simplejpeg
from facedet_server.errors import Code, InvalidImage
from facedet_server.image.decode import (
    check_pixels,
    dct_scale_for,
    decode_encoded,
    decode_jpeg,
    decode_png,
    decode_raw,
)
from facedet_server.tensor.letterbox import letterbox
from PIL import Image

BIG = 100_000_000


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    data: bytes = simplejpeg.encode_jpeg(image, quality=quality, colorspace="RGB", colorsubsampling="444")
    return data


def pil_bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def squares_image(w: int, h: int, side: int, spots: list[tuple[int, int]]) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    for x, y in spots:
        image[y : y + side, x : x + side] = 255
    return image


def bright_centroid(gray: np.ndarray, threshold: int) -> tuple[float, float]:
    weights = np.where(gray > threshold, gray.astype(np.float64), 0.0)
    ys, xs = np.indices(gray.shape)
    total = weights.sum()
    assert total > 0
    return float((weights * (xs + 0.5)).sum() / total), float((weights * (ys + 0.5)).sum() / total)


# (width, height, target_w, target_h) -> M, worked out by hand: the smallest M with M/8 >= the
# letterbox ratio min(tw/w, th/h), and 8 whenever that ratio is 1/2 or more.
DCT_CASES = [
    ((2560, 1440, 640, 640), 2),  # ratio 0.25
    ((1280, 720, 640, 640), 8),  # ratio exactly 0.5: not reduced
    ((1281, 720, 640, 640), 4),  # ratio just under 0.5
    ((4000, 3000, 640, 640), 2),  # ratio 0.16
    ((6400, 6400, 640, 640), 1),  # ratio 0.1
    ((5120, 2880, 640, 640), 1),  # ratio exactly 1/8
    ((2001, 1333, 640, 640), 3),  # ratio 0.3198
    ((1333, 2001, 640, 640), 3),
    ((1920, 1080, 640, 384), 3),  # ratio 1/3 on a rectangular input
    ((640, 480, 640, 640), 8),  # no shrinking at all
    ((100, 100, 640, 640), 8),  # enlarged
    ((8000, 10, 640, 640), 1),
]


@pytest.mark.parametrize(("args", "expected"), DCT_CASES, ids=[f"{a[0]}x{a[1]}" for a, _ in DCT_CASES])
def test_dct_scale_for(args: tuple[int, int, int, int], expected: int) -> None:
    assert dct_scale_for(*args) == expected


def test_dct_scale_is_the_largest_reduction_that_stays_above_the_letterbox_size() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        w, h = (int(v) for v in rng.integers(1, 12000, 2))
        tw, th = (int(v) * 32 for v in rng.integers(1, 41, 2))
        m = dct_scale_for(w, h, tw, th)
        assert 1 <= m <= 8
        ratio = min(tw / w, th / h)
        if ratio >= 0.5:
            assert m == 8
            continue
        # Decoded at M/8 the image is at least as large as its letterboxed self...
        assert math.ceil(w * m / 8) >= w * ratio - 1e-9 and math.ceil(h * m / 8) >= h * ratio - 1e-9
        # ...and (M-1)/8 would have been too small.
        if m > 1:
            assert w * (m - 1) / 8 < w * ratio or h * (m - 1) / 8 < h * ratio


# The spots are deliberately not on 8-pixel block boundaries.
DCT_DECODES = [
    # (w, h, side, spots, expected M)
    (2560, 1440, 64, [(203, 117), (2301, 1259), (1250, 700)], 2),
    (2001, 1333, 48, [(37, 29), (1913, 1261), (1003, 611)], 3),
    (1333, 2001, 48, [(29, 37), (1261, 1913)], 3),
    (3203, 1001, 40, [(11, 13), (3141, 947)], 2),
    (5000, 700, 80, [(4901, 611), (17, 5)], 2),  # ratio 0.128: just over 1/8
    (6400, 4000, 96, [(6203, 3801), (45, 77)], 1),
]


@pytest.mark.parametrize(
    ("w", "h", "side", "spots", "m"), DCT_DECODES, ids=[f"{c[0]}x{c[1]}" for c in DCT_DECODES]
)
def test_dct_scaled_decode_maps_back_to_original_pixels(
    w: int, h: int, side: int, spots: list[tuple[int, int]], m: int
) -> None:
    data = jpeg(squares_image(w, h, side, spots))
    decoded = decode_jpeg(data, BIG, target=(640, 640))
    assert (decoded.width, decoded.height) == (w, h)
    assert decoded.pixels.shape == (math.ceil(h * m / 8), math.ceil(w * m / 8), 3)
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.flags.c_contiguous
    assert decoded.scale_x == pytest.approx(8 / m) and decoded.scale_y == pytest.approx(8 / m)

    gray = decoded.pixels[..., 1]
    canvas, transform = letterbox(decoded.pixels, 640, 640, 114, (decoded.scale_x, decoded.scale_y))
    search = max(side, 8 * 8 // m)
    for x, y in spots:
        centre = np.array([x + side / 2, y + side / 2])
        # In the decoded pixels: decoded coordinate * scale = original coordinate.
        dx0 = max(0, int((x - search) / decoded.scale_x))
        dy0 = max(0, int((y - search) / decoded.scale_y))
        dx1 = int((x + side + search) / decoded.scale_x) + 1
        dy1 = int((y + side + search) / decoded.scale_y) + 1
        cx, cy = bright_centroid(gray[dy0:dy1, dx0:dx1], 40)
        found = np.array([(dx0 + cx) * decoded.scale_x, (dy0 + cy) * decoded.scale_y])
        assert np.all(np.abs(found - centre) <= decoded.scale_x), (found, centre)
        # Through the letterbox: the canvas map takes network pixels all the way to the original.
        net = transform.to_network(
            np.array([x - search, y - search, x + side + search, y + side + search], float)
        )
        nx0, ny0 = (max(0, int(v)) for v in net[:2])
        nx1, ny1 = (int(v) + 2 for v in net[2:])
        ncx, ncy = bright_centroid(canvas[ny0:ny1, nx0:nx1, 1], 140)
        back = transform.to_original(np.array([nx0 + ncx, ny0 + ncy]))
        assert abs(back[0] - centre[0]) <= transform.gain_x, (back, centre)
        assert abs(back[1] - centre[1]) <= transform.gain_y, (back, centre)


def test_dct_reduced_square_keeps_its_size() -> None:
    """A 160-pixel square decoded at 1/4 is 40 decoded pixels wide, i.e. 160 original pixels."""
    x, y, side = 803, 421, 160
    data = jpeg(squares_image(2560, 1440, side, [(x, y)]))
    decoded = decode_jpeg(data, BIG, target=(640, 640))
    assert decoded.scale_x == 4.0
    ys, xs = np.nonzero(decoded.pixels[..., 1] > 127)
    left, right = xs.min() * decoded.scale_x, (xs.max() + 1) * decoded.scale_x
    top, bottom = ys.min() * decoded.scale_y, (ys.max() + 1) * decoded.scale_y
    assert abs(left - x) <= 4 and abs(right - (x + side)) <= 4
    assert abs(top - y) <= 4 and abs(bottom - (y + side)) <= 4


def test_no_reduction_without_target_or_when_ratio_is_half_or_more() -> None:
    spots = [(100, 100)]
    big = jpeg(squares_image(2560, 1440, 32, spots))
    full = decode_jpeg(big, BIG)
    assert full.pixels.shape == (1440, 2560, 3) and (full.scale_x, full.scale_y) == (1.0, 1.0)
    half = jpeg(squares_image(1280, 720, 32, spots))
    decoded = decode_jpeg(half, BIG, target=(640, 640))
    assert decoded.pixels.shape == (720, 1280, 3) and (decoded.scale_x, decoded.scale_y) == (1.0, 1.0)
    # decode_encoded forwards the target.
    assert decode_encoded(big, BIG, target=(640, 640)).pixels.shape == (360, 640, 3)
    assert decode_encoded(big, BIG).pixels.shape == (1440, 2560, 3)


def test_jpeg_colour_is_rgb() -> None:
    image = np.zeros((16, 48, 3), np.uint8)
    image[:, :16] = (255, 0, 0)
    image[:, 16:32] = (0, 255, 0)
    image[:, 32:] = (0, 0, 255)
    decoded = decode_encoded(jpeg(image), BIG)
    assert decoded.pixels.shape == (16, 48, 3)
    np.testing.assert_allclose(decoded.pixels[8, [8, 24, 40]], image[8, [8, 24, 40]], atol=8)


def test_grayscale_jpeg_becomes_rgb() -> None:
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))[..., None]
    data = simplejpeg.encode_jpeg(gray, quality=98, colorspace="GRAY")
    decoded = decode_encoded(data, BIG)
    assert decoded.pixels.shape == (32, 64, 3)
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 1])
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 2])
    assert np.abs(decoded.pixels[..., 0].astype(int) - gray[..., 0]).max() <= 4


@pytest.mark.parametrize(
    "cmyk",
    [
        (0, 0, 0, 0),
        (0, 0, 0, 255),
        (0, 255, 255, 0),
        (255, 0, 255, 0),
        (40, 120, 200, 30),
        (200, 10, 90, 100),
    ],
)
def test_cmyk_jpeg_colours_match_pillow(cmyk: tuple[int, int, int, int]) -> None:
    data = pil_bytes(Image.new("CMYK", (64, 48), cmyk), "JPEG", quality=98)
    assert simplejpeg.decode_jpeg_header(data)[2] == "CMYK"
    decoded = decode_encoded(data, BIG)
    assert decoded.pixels.shape == (48, 64, 3) and decoded.pixels.dtype == np.uint8
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.abs(decoded.pixels.astype(int) - reference).max() <= 3


def test_cmyk_jpeg_is_dct_reduced_too() -> None:
    data = pil_bytes(Image.new("CMYK", (2560, 1440), (0, 255, 255, 0)), "JPEG", quality=90)
    decoded = decode_jpeg(data, BIG, target=(640, 640))
    assert decoded.pixels.shape == (360, 640, 3) and decoded.scale_x == 4.0
    np.testing.assert_allclose(decoded.pixels[180, 320], (255, 0, 0), atol=3)


def test_png_is_lossless_rgb() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    decoded = decode_encoded(pil_bytes(Image.fromarray(image), "PNG"), BIG, target=(8, 8))
    assert (decoded.width, decoded.height) == (53, 37)
    assert (decoded.scale_x, decoded.scale_y) == (1.0, 1.0)  # PNG is never reduced
    np.testing.assert_array_equal(decoded.pixels, image)


def test_png_gray_and_rgba() -> None:
    gray = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    decoded = decode_png(pil_bytes(Image.fromarray(gray), "PNG"), BIG)
    np.testing.assert_array_equal(decoded.pixels, np.repeat(gray[..., None], 3, axis=-1))
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 2], rgba[..., 3] = 10, 200, 128
    decoded = decode_png(pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), BIG)
    assert decoded.pixels.shape == (5, 6, 3)
    assert decoded.pixels[0, 0].tolist() == [10, 0, 200]


def test_raw_frames() -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    decoded = decode_raw(11, 7, "RGB8", rgb.tobytes(), BIG)
    np.testing.assert_array_equal(decoded.pixels, rgb)
    assert (decoded.width, decoded.height, decoded.scale_x, decoded.scale_y) == (11, 7, 1.0, 1.0)
    decoded = decode_raw(11, 7, "BGR8", rgb[..., ::-1].tobytes(), BIG)
    np.testing.assert_array_equal(decoded.pixels, rgb)
    gray = rng.integers(0, 256, (7, 11), dtype=np.uint8)
    decoded = decode_raw(11, 7, "GRAY8", gray.tobytes(), BIG)
    np.testing.assert_array_equal(decoded.pixels, np.repeat(gray[..., None], 3, axis=-1))
    assert decoded.pixels.shape == (7, 11, 3)


def expect_invalid(match: str, call: object, *args: object, **kwargs: object) -> InvalidImage:
    with pytest.raises(InvalidImage, match=match) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.message == str(info.value)
    return info.value


def sof_offset(data: bytes) -> int:
    offset = data.find(b"\xff\xc0")
    assert offset > 0
    return offset


def small_jpeg() -> bytes:
    return jpeg(np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8), quality=90)


def test_encoded_errors() -> None:
    data = small_jpeg()
    expect_invalid("empty", decode_encoded, b"", BIG)
    expect_invalid(
        r"not a JPEG or PNG \(first bytes 68 65 6c 6c 6f 20 77 6f\)", decode_encoded, b"hello world", BIG
    )
    expect_invalid(
        "GIF images are not supported", decode_encoded, pil_bytes(Image.new("RGB", (8, 8)), "GIF"), BIG
    )
    expect_invalid(
        "BMP images are not supported", decode_encoded, pil_bytes(Image.new("RGB", (8, 8)), "BMP"), BIG
    )
    expect_invalid("TIFF", decode_encoded, pil_bytes(Image.new("RGB", (8, 8)), "TIFF"), BIG)
    expect_invalid("WebP", decode_encoded, pil_bytes(Image.new("RGB", (8, 8)), "WEBP"), BIG)
    expect_invalid("JPEG header is unreadable", decode_encoded, data[:20], BIG)
    expect_invalid("JPEG data is corrupt or truncated", decode_encoded, data[: len(data) // 2], BIG)
    png = pil_bytes(Image.new("RGB", (30, 20)), "PNG")
    expect_invalid("PNG header is truncated", decode_encoded, png[:20], BIG)
    expect_invalid("PNG data is corrupt or truncated", decode_encoded, png[: len(png) - 20], BIG)


def test_too_many_pixels_is_refused_from_the_header_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded")

    data = bytearray(small_jpeg())
    sof = sof_offset(bytes(data))
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width in SOF0
    monkeypatch.setattr("facedet_server.image.decode.simplejpeg.decode_jpeg", no_decoding)
    monkeypatch.setattr("facedet_server.image.decode.cv2.imdecode", no_decoding)
    error = expect_invalid("over the server limit", decode_encoded, bytes(data), 50_000_000)
    assert "60000x60000" in error.message and "50.0 Mpx" in error.message
    png = bytearray(pil_bytes(Image.new("RGB", (30, 20)), "PNG"))
    png[16:24] = struct.pack(">II", 100_000, 100_000)
    expect_invalid("100000x100000", decode_encoded, bytes(png), 50_000_000)


def test_pixel_limit_is_inclusive() -> None:
    data = small_jpeg()
    assert decode_encoded(data, 160 * 120).pixels.shape == (120, 160, 3)
    expect_invalid("over the server limit", decode_encoded, data, 160 * 120 - 1)
    check_pixels(160, 120, 160 * 120)
    expect_invalid("zero size", check_pixels, 0, 10, BIG)
    expect_invalid("zero size", check_pixels, 10, -1, BIG)


def test_zero_size_headers() -> None:
    data = bytearray(small_jpeg())
    sof = sof_offset(bytes(data))
    data[sof + 5 : sof + 7] = b"\x00\x00"  # height 0
    expect_invalid("JPEG header is unreadable|zero size", decode_encoded, bytes(data), BIG)
    png = bytearray(pil_bytes(Image.new("RGB", (30, 20)), "PNG"))
    png[16:24] = struct.pack(">II", 0, 20)
    expect_invalid(r"zero size \(0x20\)", decode_encoded, bytes(png), BIG)


def test_raw_errors() -> None:
    rgb = bytes(6 * 4 * 3)
    error = expect_invalid(
        "raw.data has 71 bytes but 6x4 RGB8 needs 6\\*4\\*3 = 72", decode_raw, 6, 4, "RGB8", rgb[:-1], BIG
    )
    assert "72" in error.message
    expect_invalid("needs 6\\*4\\*1 = 24", decode_raw, 6, 4, "GRAY8", rgb, BIG)
    expect_invalid("raw.format YUV420 is not supported", decode_raw, 6, 4, "YUV420", rgb, BIG)
    expect_invalid("zero size", decode_raw, 0, 4, "RGB8", b"", BIG)
    expect_invalid("over the server limit", decode_raw, 6, 4, "RGB8", rgb, 23)
