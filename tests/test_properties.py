"""Properties of the pure numerics (hypothesis): letterbox and its inverse, NMS, face
selection, EXIF orientation. Derandomized, so a run is the same on every machine."""

from __future__ import annotations

import struct

import numpy as np
from facedet_server.faces.nms import box_iou, nms
from facedet_server.faces.options import Options
from facedet_server.faces.select import select_faces
from facedet_server.image.exif import jpeg_orientation, upright, upright_size
from facedet_server.tensor.letterbox import Letterbox, input_shape_for, letterbox
from hypothesis import given, settings
from hypothesis import strategies as st

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True)

sides = st.integers(min_value=1, max_value=300)


@PROPERTY
@given(w=sides, h=sides, tw=sides, th=sides, fx=st.floats(0, 1), fy=st.floats(0, 1))
def test_letterbox_maps_points_into_the_canvas_and_back(
    w: int, h: int, tw: int, th: int, fx: float, fy: float
) -> None:
    canvas, transform = letterbox(np.zeros((h, w, 3), np.uint8), tw, th)
    assert canvas.shape == (th, tw, 3)
    point = np.array([fx * w, fy * h])
    inside = transform.to_network(point)
    assert -1e-6 <= inside[0] <= tw + 1e-6 and -1e-6 <= inside[1] <= th + 1e-6
    assert np.all(np.abs(transform.to_original(inside) - point) <= 1.0)


@PROPERTY
@given(w=sides, h=sides, tw=sides, th=sides)
def test_letterbox_content_region_maps_onto_the_whole_image(w: int, h: int, tw: int, th: int) -> None:
    _, transform = letterbox(np.zeros((h, w, 3), np.uint8), tw, th)
    corners = transform.to_network(np.array([0.0, 0.0, float(w), float(h)]))
    # The resized image starts on a whole canvas pixel and fits in the canvas.
    assert corners[0] == int(corners[0]) and corners[1] == int(corners[1])
    assert corners[2] <= tw + 1e-6 and corners[3] <= th + 1e-6


@PROPERTY
@given(
    w=st.integers(1, 10_000),
    h=st.integers(1, 10_000),
    multiple=st.sampled_from([8, 16, 32, 64]),
    steps=st.integers(1, 40),
)
def test_input_shape_is_a_multiple_within_size(w: int, h: int, multiple: int, steps: int) -> None:
    size = multiple * steps
    shape = input_shape_for(w, h, None, size, multiple)
    assert all(side % multiple == 0 and multiple <= side <= size for side in shape)
    assert max(shape) == size  # the long side is always the full size
    assert input_shape_for(w, h, (640, 384), size, multiple) == (640, 384)


def _boxes(draw: st.DrawFn, n: int) -> np.ndarray:
    coords = st.floats(0, 100, allow_nan=False, width=32)
    extents = st.floats(0.5, 60, allow_nan=False, width=32)
    rows = [[draw(coords), draw(coords), draw(extents), draw(extents)] for _ in range(n)]
    boxes = np.array(rows, np.float64).reshape(n, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


@st.composite
def box_sets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 30))
    scores = draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n))
    return _boxes(draw, n), np.array(scores)


@PROPERTY
@given(data=box_sets(), threshold=st.floats(0.05, 0.95))
def test_nms_invariants(data: tuple[np.ndarray, np.ndarray], threshold: float) -> None:
    boxes, scores = data
    keep = nms(boxes, scores, threshold)
    assert len(set(keep.tolist())) == len(keep)
    assert np.all(np.diff(scores[keep]) <= 0)
    assert keep[0] == int(np.argmax(scores))  # argmax is the first of equal maxima, as is nms
    for i, kept in enumerate(keep):
        assert np.all(box_iou(boxes[kept], boxes[keep[i + 1 :]]) <= threshold)
    again = nms(boxes[keep], scores[keep], threshold)
    assert again.tolist() == list(range(len(keep)))


@st.composite
def candidate_sets(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(0, 30))
    cands = np.zeros((n, 15), np.float32)
    cands[:, :4] = _boxes(draw, n) * 7 - 50  # some fall outside the image on every side
    cands[:, 4] = draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n)) if n else []
    cands[:, 5:] = np.array(
        draw(st.lists(st.floats(-100, 800, width=32), min_size=10 * n, max_size=10 * n)), np.float32
    ).reshape(n, 10)
    return cands


@PROPERTY
@given(
    cands=candidate_sets(),
    min_confidence=st.floats(0.01, 1),
    max_faces=st.integers(1, 10),
    min_face_size=st.floats(0, 40),
    gain=st.floats(0.2, 5),
    offset=st.floats(0, 100),
    width=st.integers(1, 1000),
    height=st.integers(1, 1000),
)
def test_selected_faces_are_inside_sorted_and_limited(
    cands: np.ndarray,
    min_confidence: float,
    max_faces: int,
    min_face_size: float,
    gain: float,
    offset: float,
    width: int,
    height: int,
) -> None:
    options = Options(min_confidence, 0.5, max_faces, min_face_size)
    faces = select_faces(cands, options, Letterbox(gain, gain * 1.1, offset, offset / 2), width, height)
    assert faces.dtype == np.float32 and faces.shape[1:] == (15,)
    assert len(faces) <= max_faces
    assert np.all(np.diff(faces[:, 4]) <= 0) and np.all(faces[:, 4] >= np.float32(min_confidence))
    xs, ys = (
        np.concatenate([faces[:, 0:4:2], faces[:, 5::2]], 1),
        np.concatenate([faces[:, 1:4:2], faces[:, 6::2]], 1),
    )
    assert np.all((xs >= 0) & (xs <= width)) and np.all((ys >= 0) & (ys <= height))
    sides_kept = np.minimum(faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1])
    assert np.all(sides_kept >= np.float32(min_face_size) - 1e-3)


@PROPERTY
@given(w=st.integers(2, 9), h=st.integers(2, 9), channels=st.sampled_from([1, 3]))
def test_upright_orientations(w: int, h: int, channels: int) -> None:
    pixels = np.arange(h * w * channels, dtype=np.int32).reshape(h, w, channels)
    turned = {o: upright(pixels, o) for o in range(1, 9)}
    for o, view in turned.items():
        assert view.shape[1::-1] == upright_size(w, h, o)
        assert view.shape[2] == channels
    assert turned[1] is pixels
    # Every pixel is distinct, so the eight symmetries of a rectangle give eight distinct pictures.
    assert len({(v.shape, v.tobytes()) for v in turned.values()}) == 8


def _exif_jpeg(orientation: int, endian: str) -> bytes:
    order = b"II" if endian == "<" else b"MM"
    tiff = order + struct.pack(endian + "HI", 42, 8) + struct.pack(endian + "H", 1)
    tiff += struct.pack(endian + "HHIH2x", 0x0112, 3, 1, orientation) + b"\0\0\0\0"
    segment = b"Exif\0\0" + tiff
    return b"\xff\xd8\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + b"\xff\xd9"


@PROPERTY
@given(
    data=st.binary(max_size=200),
    orientation=st.integers(0, 20),
    endian=st.sampled_from("<>"),
    cut=st.integers(0, 80),
)
def test_jpeg_orientation_never_raises(data: bytes, orientation: int, endian: str, cut: int) -> None:
    well_formed = _exif_jpeg(orientation, endian)
    assert jpeg_orientation(well_formed) == (orientation if 1 <= orientation <= 8 else 1)
    for candidate in (data, b"\xff\xd8" + data, well_formed[:cut] + data, well_formed[: -cut or None]):
        assert 1 <= jpeg_orientation(candidate) <= 8
        assert 1 <= jpeg_orientation(memoryview(candidate)) <= 8
