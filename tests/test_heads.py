"""Head decoding against a literal, loop-by-loop reading of the upstream YOLOv5-Face formulas
(shared/README.md): xy = (2*sigmoid - 0.5 + grid) * stride, wh = (2*sigmoid)^2 * anchor,
landmarks = raw * anchor + grid * stride, score = sigmoid(obj) * sigmoid(cls)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from facedet_server.faces.heads import CANDIDATE_WIDTH, decode_head, decode_heads
from facedet_server.model.spec import UPSTREAM_YOLOV5N_05, YOLOV5_FACE_ANCHORS, ModelSpec


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def reference_head(raw: np.ndarray, stride: int, anchors: np.ndarray, num_landmarks: int = 5) -> np.ndarray:
    """Rows in (anchor, y, x) order, one cell at a time, in float64."""
    n_images, n_anchors, gh, gw, _ = raw.shape
    rows = []
    for n in range(n_images):
        image_rows = []
        for a in range(n_anchors):
            anchor_w, anchor_h = float(anchors[a][0]), float(anchors[a][1])
            for y in range(gh):
                for x in range(gw):
                    p = [float(v) for v in raw[n, a, y, x]]
                    cx = (sigmoid(p[0]) * 2 - 0.5 + x) * stride
                    cy = (sigmoid(p[1]) * 2 - 0.5 + y) * stride
                    w = (sigmoid(p[2]) * 2) ** 2 * anchor_w
                    h = (sigmoid(p[3]) * 2) ** 2 * anchor_h
                    score = sigmoid(p[4]) * sigmoid(p[5 + 2 * num_landmarks])
                    row = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score]
                    for k in range(num_landmarks):
                        row.append(p[5 + 2 * k] * anchor_w + x * stride)
                        row.append(p[6 + 2 * k] * anchor_h + y * stride)
                    image_rows.append(row)
        rows.append(image_rows)
    return np.array(rows, np.float64).reshape(n_images, -1, 5 + 2 * num_landmarks)


@pytest.mark.parametrize(
    ("n", "gh", "gw", "stride", "num_landmarks"),
    [(1, 1, 1, 8, 5), (2, 2, 3, 8, 5), (1, 5, 7, 16, 5), (3, 4, 4, 32, 5), (1, 3, 6, 8, 2), (2, 6, 3, 16, 0)],
)
def test_decode_head_matches_reference(n: int, gh: int, gw: int, stride: int, num_landmarks: int) -> None:
    rng = np.random.default_rng(gh * 100 + gw * 10 + stride)
    raw = rng.normal(0, 2.5, (n, 3, gh, gw, 6 + 2 * num_landmarks)).astype(np.float32)
    anchors = rng.uniform(2, 300, (3, 2)).astype(np.float32)
    got = decode_head(raw, stride, anchors, num_landmarks)
    assert got.shape == (n, 3 * gh * gw, 5 + 2 * num_landmarks)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference_head(raw, stride, anchors, num_landmarks), rtol=2e-5, atol=2e-4)


def test_decode_head_upstream_anchors_on_a_full_size_grid() -> None:
    rng = np.random.default_rng(7)
    raw = rng.normal(0, 3, (1, 3, 20, 20, 16)).astype(np.float32)
    anchors = np.array(YOLOV5_FACE_ANCHORS[2], np.float32)
    np.testing.assert_allclose(
        decode_head(raw, 32, anchors), reference_head(raw, 32, anchors), rtol=2e-5, atol=5e-4
    )


def test_decode_head_hand_worked_cell() -> None:
    """All-zero logits: sigmoid = 0.5, so the box is the anchor centred on the cell's corner
    offset by half a stride; landmarks sit on the grid point; score is 0.25."""
    raw = np.zeros((1, 2, 3, 4, 16), np.float32)
    raw[0, 1, 2, 3, 5:15] = np.arange(1, 11)  # landmark logits of anchor 1, y=2, x=3
    anchors = np.array([[10, 20], [30, 40]], np.float32)
    got = decode_head(raw, 16, anchors)
    row = got[0, 1 * 12 + 2 * 4 + 3]
    # centre ((0.5*2 - 0.5 + 3) * 16, (0.5*2 - 0.5 + 2) * 16) = (56, 40); size (1*30, 1*40)
    np.testing.assert_allclose(row[:5], [41, 20, 71, 60, 0.25])
    expected_landmarks = [
        v * (30 if i % 2 == 0 else 40) + (48 if i % 2 == 0 else 32) for i, v in enumerate(range(1, 11))
    ]
    np.testing.assert_allclose(row[5:], expected_landmarks)
    # Anchor 0 at x=1, y=0: centre (24, 8), size (10, 20).
    np.testing.assert_allclose(got[0, 1][:5], [19, -2, 29, 18, 0.25])


def test_decode_head_saturated_logits() -> None:
    raw = np.zeros((1, 1, 1, 1, 16), np.float32)
    raw[..., 0:5] = 40.0
    raw[..., 15] = 40.0
    row = decode_head(raw, 8, np.array([[4, 5]], np.float32))[0, 0]
    # sigmoid -> 1: centre (1.5*8, 1.5*8), size (4*4, 4*5), score 1
    np.testing.assert_allclose(row[:5], [12 - 8, 12 - 10, 12 + 8, 12 + 10, 1.0], rtol=1e-6)
    raw[..., 4] = -40.0
    assert decode_head(raw, 8, np.array([[4, 5]], np.float32))[0, 0, 4] < 1e-12


def small_spec(output_kind: str = "raw_heads") -> ModelSpec:
    return ModelSpec(
        name="test",
        strides=(8, 16, 32),
        anchors=(((3, 4), (5, 6)), ((7, 8), (9, 10)), ((11, 12), (13, 14))),
        input_name="x",
        output_names=("a", "b", "c"),
        output_kind=output_kind,  # type: ignore[arg-type]
        input_height=None,
        input_width=None,
        batch_size=None,
    )


def test_decode_heads_concatenates_layers_in_stride_order() -> None:
    spec = small_spec()
    rng = np.random.default_rng(11)
    # A 96x64 (w x h) input: grids 12x8, 6x4, 3x2 -- not square, so x and y cannot be confused.
    outputs = [rng.normal(0, 2, (2, 2, 64 // s, 96 // s, 16)).astype(np.float32) for s in spec.strides]
    got = decode_heads(outputs, spec)
    expected = np.concatenate(
        [
            reference_head(raw, stride, np.array(anchors))
            for raw, stride, anchors in zip(outputs, spec.strides, spec.anchors, strict=True)
        ],
        axis=1,
    )
    assert got.shape == (2, 2 * (96 + 24 + 6), CANDIDATE_WIDTH)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-4)


def test_decode_heads_upstream_layout() -> None:
    """A single strong cell in the stride-32 layer comes out at its row in the concatenation:
    after 3*80*80 + 3*40*40 rows, then anchor-major, row-major."""
    outputs = [np.full((1, 3, 640 // s, 640 // s, 16), -20.0, np.float32) for s in (8, 16, 32)]
    a, y, x = 1, 3, 5
    outputs[2][0, a, y, x, :] = 0.0
    outputs[2][0, a, y, x, 4] = 20.0
    outputs[2][0, a, y, x, 15] = 20.0
    got = decode_heads(outputs, UPSTREAM_YOLOV5N_05)
    assert got.shape == (1, 3 * (6400 + 1600 + 400), 15)
    index = 3 * 6400 + 3 * 1600 + a * 400 + y * 20 + x
    assert int(np.argmax(got[0, :, 4])) == index
    assert got[0, index, 4] == pytest.approx(1.0)
    assert np.sort(got[0, :, 4])[-2] < 1e-10
    # Sigmoid 0.5: centre ((1 - 0.5 + 5) * 32, (1 - 0.5 + 3) * 32) = (176, 112), size = anchor (231, 300).
    np.testing.assert_allclose(got[0, index, :4], [176 - 115.5, 112 - 150, 176 + 115.5, 112 + 150], rtol=1e-6)
    np.testing.assert_allclose(got[0, index, 5::2], 5 * 32)
    np.testing.assert_allclose(got[0, index, 6::2], 3 * 32)


def test_decode_heads_requires_one_output_per_layer() -> None:
    outputs = [np.zeros((1, 3, 80, 80, 16), np.float32), np.zeros((1, 3, 40, 40, 16), np.float32)]
    with pytest.raises(ValueError):
        decode_heads(outputs, UPSTREAM_YOLOV5N_05)


def test_decoded_kind_turns_centres_into_corners() -> None:
    spec = small_spec("decoded")
    rng = np.random.default_rng(12)
    decoded = rng.uniform(1, 600, (2, 9, 15)).astype(np.float64)
    before = decoded.copy()
    got = decode_heads([decoded], spec)
    assert got.shape == (2, 9, 15) and got.dtype == np.float32
    cx, cy, w, h = (decoded[..., i] for i in range(4))
    np.testing.assert_allclose(got[..., 0], cx - w / 2, rtol=1e-6)
    np.testing.assert_allclose(got[..., 1], cy - h / 2, rtol=1e-6)
    np.testing.assert_allclose(got[..., 2], cx + w / 2, rtol=1e-6)
    np.testing.assert_allclose(got[..., 3], cy + h / 2, rtol=1e-6)
    np.testing.assert_allclose(got[..., 4:], decoded[..., 4:], rtol=1e-6)
    np.testing.assert_array_equal(decoded, before)  # the backend's array is not modified
