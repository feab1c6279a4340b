"""Letterboxing: geometry of the canvas, the padding, and the map back to the client's pixels.

Coordinates are continuous: pixel i covers [i, i + 1), so its centre is i + 0.5 (the convention of
OpenCV's resize and of the model's boxes).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from facedet_server.tensor.letterbox import Letterbox, input_shape_for, letterbox, to_tensor

PAD = 114


def content_box(canvas: np.ndarray, pad: int = PAD) -> tuple[int, int, int, int]:
    """[x0, y0, x1, y1) of the pixels that differ from the pad value."""
    ys, xs = np.nonzero(np.any(canvas != pad, axis=-1))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def centroid(gray: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted centre of a single-channel image, in continuous coordinates."""
    weights = gray.astype(np.float64)
    total = weights.sum()
    assert total > 0, "nothing bright to locate"
    ys, xs = np.indices(gray.shape)
    return float((weights * (xs + 0.5)).sum() / total), float((weights * (ys + 0.5)).sum() / total)


# (w, h, target_w, target_h) -> (new_w, new_h, left, top), worked out by hand.
GEOMETRY = [
    ((200, 100, 640, 640), (640, 320, 0, 160)),  # landscape
    ((100, 300, 640, 640), (213, 640, 213, 0)),  # portrait, enlarged 2.133x
    ((640, 640, 640, 640), (640, 640, 0, 0)),  # exact fit
    ((1, 1, 640, 640), (640, 640, 0, 0)),  # tiny
    ((1280, 720, 640, 384), (640, 360, 0, 12)),  # rectangular network input
    ((33, 17, 64, 64), (64, 33, 0, 15)),  # odd sizes, upscaling
    ((10, 1000, 640, 640), (6, 640, 317, 0)),  # very thin
    ((3000, 2000, 640, 640), (640, 427, 0, 106)),  # large, rounding up
]


@pytest.mark.parametrize(("size", "expected"), GEOMETRY, ids=[f"{s[0]}x{s[1]}" for s, _ in GEOMETRY])
def test_canvas_geometry_and_padding(
    size: tuple[int, int, int, int], expected: tuple[int, int, int, int]
) -> None:
    w, h, tw, th = size
    new_w, new_h, left, top = expected
    image = np.full((h, w, 3), 7, np.uint8)
    canvas, transform = letterbox(image, tw, th)
    assert canvas.shape == (th, tw, 3)
    assert canvas.dtype == np.uint8
    # The image (constant 7 survives any resampling) fills exactly the expected rectangle...
    region = canvas[top : top + new_h, left : left + new_w]
    assert np.all(region == 7)
    # ...and everything else is the pad value.
    mask = np.ones((th, tw), bool)
    mask[top : top + new_h, left : left + new_w] = False
    assert np.all(canvas[mask] == PAD)
    # Centred: the two pads differ by at most one pixel.
    assert abs(left - (tw - left - new_w)) <= 1
    assert abs(top - (th - top - new_h)) <= 1
    assert transform == Letterbox(gain_x=w / new_w, gain_y=h / new_h, offset_x=left, offset_y=top)


def test_custom_pad_value() -> None:
    canvas, _ = letterbox(np.zeros((10, 20, 3), np.uint8), 40, 40, pad_value=3)
    assert np.all(canvas[:10] == 3) and np.all(canvas[30:] == 3)
    assert np.all(canvas[10:30] == 0)


def test_exact_fit_copies_pixels_unchanged() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (384, 640, 3), dtype=np.uint8)
    canvas, transform = letterbox(image, 640, 384)
    np.testing.assert_array_equal(canvas, image)
    assert transform == Letterbox(1.0, 1.0, 0.0, 0.0)


def test_reused_output_buffer_is_fully_overwritten() -> None:
    rng = np.random.default_rng(2)
    out = rng.integers(0, 256, (640, 640, 3), dtype=np.uint8)  # garbage from a previous image
    image = np.full((300, 100, 3), 9, np.uint8)
    canvas, _ = letterbox(image, 640, 640, out=out)
    assert canvas is out
    x0, y0, x1, y1 = content_box(canvas)
    assert np.all(canvas[y0:y1, x0:x1] == 9)
    outside = np.ones((640, 640), bool)
    outside[y0:y1, x0:x1] = False
    assert np.all(canvas[outside] == PAD)
    # A landscape image in the same buffer leaves nothing of the portrait one.
    canvas, _ = letterbox(np.full((100, 300, 3), 200, np.uint8), 640, 640, out=out)
    x0, y0, x1, y1 = content_box(canvas)
    assert (x0, x1) == (0, 640)
    assert set(np.unique(canvas).tolist()) == {PAD, 200}


def random_sizes(count: int, seed: int) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    sizes = [(1, 1, 640, 640), (640, 640, 640, 640), (5000, 7, 640, 640), (7, 5000, 640, 640)]
    while len(sizes) < count:
        w, h = (int(v) for v in np.exp(rng.uniform(np.log(2), np.log(4000), 2)).round())
        tw, th = (int(v) * 32 for v in rng.integers(1, 21, 2))
        sizes.append((w, h, tw, th))
    return sizes


@pytest.mark.parametrize("source_scale", [(1.0, 1.0), (2.0, 2.0), (8 / 3, 8 / 3), (4.0, 1.5)])
def test_image_extent_maps_onto_content_region(source_scale: tuple[float, float]) -> None:
    """The client's whole image [0, W) x [0, H) lands exactly on the non-pad rectangle of the
    canvas, whatever the sizes, and both maps invert each other."""
    sx, sy = source_scale
    rng = np.random.default_rng(3)
    for w, h, tw, th in random_sizes(40, seed=4):
        canvas, transform = letterbox(np.full((h, w, 3), 7, np.uint8), tw, th, source_scale=source_scale)
        x0, y0, x1, y1 = content_box(canvas)
        corners = np.array([0.0, 0.0, w * sx, h * sy])
        np.testing.assert_allclose(transform.to_network(corners), [x0, y0, x1, y1], atol=1e-6)
        region = np.array([x0, y0, x1, y1], float)
        np.testing.assert_allclose(transform.to_original(region), corners, rtol=1e-9)
        # Random points (boxes and landmarks: interleaved x, y) survive a round trip both ways.
        points = rng.uniform(0, 1, (16, 14)) * np.tile([w * sx, h * sy], 7)
        np.testing.assert_allclose(transform.to_original(transform.to_network(points)), points, rtol=1e-9)
        net = rng.uniform(0, 1, (16, 4)) * np.array([tw, th, tw, th])
        np.testing.assert_allclose(transform.to_network(transform.to_original(net)), net, rtol=1e-9)


def test_maps_keep_dtype_and_shape() -> None:
    _, transform = letterbox(np.zeros((720, 1280, 3), np.uint8), 640, 640)
    xy = np.zeros((3, 5, 10), np.float32)
    assert transform.to_original(xy).shape == (3, 5, 10)
    assert transform.to_original(xy).dtype == np.float32
    assert transform.to_network(xy).dtype == np.float32
    # x columns and y columns each get their own axis' map: (0, 0) is the top-left of the image.
    origin = transform.to_network(np.zeros(4, np.float64))
    np.testing.assert_allclose(origin, [0, 140, 0, 140])


def dot_image(w: int, h: int, px: int, py: int) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[py, px] = 255
    return image


@pytest.mark.parametrize(
    ("w", "h", "tw", "th"),
    [
        (1280, 720, 640, 640),  # 2x shrink, pad top/bottom
        (720, 1280, 640, 640),  # portrait
        (1999, 1001, 640, 640),  # awkward ratio
        (100, 60, 640, 640),  # 6.4x enlargement
        (37, 91, 320, 320),  # odd sizes, enlargement
        (640, 384, 640, 384),  # exact fit
        (3000, 500, 640, 384),  # wide into a rectangle
    ],
)
def test_bright_dot_lands_where_to_network_says(w: int, h: int, tw: int, th: int) -> None:
    rng = np.random.default_rng(w * 7919 + h)
    for _ in range(4):
        px = int(rng.integers(3, w - 3))
        py = int(rng.integers(3, h - 3))
        canvas, transform = letterbox(dot_image(w, h, px, py), tw, th, pad_value=0)
        found = np.array(centroid(canvas[..., 0]))
        expected = transform.to_network(np.array([px + 0.5, py + 0.5]))
        np.testing.assert_allclose(found, expected, atol=1.0)
        # ...and the spot found in the canvas maps back onto the dot, within one network pixel.
        back = transform.to_original(found)
        tolerance = np.array([transform.gain_x, transform.gain_y]) + 0.5
        assert np.all(np.abs(back - [px + 0.5, py + 0.5]) <= tolerance), (back, (px, py))


@pytest.mark.parametrize(("reduce_x", "reduce_y"), [(2, 2), (4, 4), (2, 3)])
def test_source_scale_maps_back_to_the_unreduced_image(reduce_x: int, reduce_y: int) -> None:
    """A reduced image letterboxed with its source_scale maps back to the full-size original."""
    w, h = 2400, 1800
    rng = np.random.default_rng(reduce_x * 10 + reduce_y)
    for _ in range(3):
        # A 12x12 block so that it survives the reduction.
        x0, y0 = int(rng.integers(20, w - 40)), int(rng.integers(20, h - 40))
        original = np.zeros((h, w, 3), np.uint8)
        original[y0 : y0 + 12, x0 : x0 + 12] = 255
        reduced = cv2.resize(original, (w // reduce_x, h // reduce_y), interpolation=cv2.INTER_AREA)
        canvas, transform = letterbox(reduced, 640, 640, pad_value=0, source_scale=(reduce_x, reduce_y))
        back = transform.to_original(np.array(centroid(canvas[..., 0])))
        # One network pixel is transform.gain original pixels.
        assert abs(back[0] - (x0 + 6)) <= transform.gain_x
        assert abs(back[1] - (y0 + 6)) <= transform.gain_y
        # The gain is the plain letterbox gain times the reduction.
        _, plain = letterbox(reduced, 640, 640)
        assert transform.gain_x == pytest.approx(plain.gain_x * reduce_x)
        assert transform.gain_y == pytest.approx(plain.gain_y * reduce_y)
        assert (transform.offset_x, transform.offset_y) == (plain.offset_x, plain.offset_y)


# (width, height, fixed, size, multiple) -> (w, h), worked out by hand.
SHAPES = [
    ((1280, 720, None, 640, 32), (640, 384)),
    ((720, 1280, None, 640, 32), (384, 640)),
    ((640, 640, None, 640, 32), (640, 640)),
    ((1920, 1080, None, 1280, 32), (1280, 736)),
    ((100, 50, None, 640, 32), (640, 320)),  # small images are enlarged
    ((1, 1, None, 640, 32), (640, 640)),
    ((4000, 10, None, 640, 32), (640, 32)),  # never below one multiple
    ((1024, 768, None, 640, 32), (640, 480)),
    ((1280, 720, None, 640, 64), (640, 384)),
    ((1000, 700, None, 640, 64), (640, 448)),
    ((1280, 720, (640, 640), 320, 32), (640, 640)),  # a fixed model ignores the image
    ((10, 10, (320, 256), 640, 32), (320, 256)),
]


@pytest.mark.parametrize(("args", "expected"), SHAPES)
def test_input_shape_for(
    args: tuple[int, int, tuple[int, int] | None, int, int], expected: tuple[int, int]
) -> None:
    width, height, fixed, size, multiple = args
    assert input_shape_for(width, height, fixed, size, multiple) == expected


def test_input_shape_for_fits_with_least_padding() -> None:
    for w, h, _, _ in random_sizes(300, seed=5):
        for size in (320, 640):
            tw, th = input_shape_for(w, h, None, size)
            assert tw % 32 == 0 and th % 32 == 0
            assert max(tw, th) == size
            ratio = size / max(w, h)
            # The letterboxed image fits, and the pad is less than one multiple on the short side.
            assert w * ratio <= tw + 1e-9 and h * ratio <= th + 1e-9
            assert min(tw - w * ratio, th - h * ratio) < 32
            if min(w, h) * ratio > 32:
                assert tw - w * ratio < 32 and th - h * ratio < 32


def test_to_tensor_layout_and_scale() -> None:
    rng = np.random.default_rng(6)
    canvas = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    batch = np.full((3, 3, 48, 80), -1.0, np.float32)
    to_tensor(canvas, batch[1])
    assert np.all(batch[0] == -1) and np.all(batch[2] == -1)  # only the slot is written
    for y, x, c in [(0, 0, 0), (47, 79, 2), (10, 33, 1), (31, 5, 2)]:
        assert batch[1, c, y, x] == pytest.approx(canvas[y, x, c] / 255.0, abs=1e-7)
    np.testing.assert_allclose(batch[1], canvas.transpose(2, 0, 1) / 255.0, atol=1e-7)
    assert batch[1].max() <= 1.0 and batch[1].min() >= 0.0


def test_to_tensor_custom_scale() -> None:
    canvas = np.array([[[0, 128, 255]]], np.uint8)
    out = np.empty((3, 1, 1), np.float32)
    to_tensor(canvas, out, scale=1.0)
    assert out.ravel().tolist() == [0.0, 128.0, 255.0]
    to_tensor(canvas, out, scale=0.5)
    assert out.ravel().tolist() == [0.0, 64.0, 127.5]


def test_letterbox_then_tensor_padding_is_114_over_255() -> None:
    canvas, _ = letterbox(np.zeros((320, 640, 3), np.uint8), 640, 640)
    out = np.empty((3, 640, 640), np.float32)
    to_tensor(canvas, out)
    assert out[:, 0, 0] == pytest.approx([114 / 255] * 3)
    assert out[:, 320, 320] == pytest.approx([0.0] * 3)
    assert math.isclose(float(out[:, :160].mean()), 114 / 255, rel_tol=1e-6)
