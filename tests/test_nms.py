"""Greedy NMS (edge cases and a brute-force reference) and select_faces (threshold, NMS, map to
the client's pixels, clamp, min_face_size, max_faces)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from facedet_server.faces import select as faces_module
from facedet_server.faces.nms import box_iou, nms
from facedet_server.faces.options import Options
from facedet_server.faces.select import select_faces
from facedet_server.tensor.letterbox import Letterbox


def iou_reference(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def nms_reference(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Textbook greedy NMS: visit by descending score (ties: lower index first), keep a box unless
    it overlaps an already kept one by more than the threshold."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if all(iou_reference(boxes[i].tolist(), boxes[k].tolist()) <= threshold for k in kept):
            kept.append(i)
    return kept


def as_list(indices: np.ndarray) -> list[int]:
    assert indices.dtype == np.int64
    return [int(i) for i in indices]


def test_box_iou_hand_values() -> None:
    box = np.array([0.0, 0.0, 2.0, 2.0])
    others = np.array(
        [
            [0, 0, 2, 2],  # identical: 1
            [1, 0, 3, 2],  # half overlap: 2 / 6
            [0, 0, 1, 1],  # inside: 1 / 4
            [2, 0, 4, 2],  # touching edge: 0
            [5, 5, 6, 6],  # disjoint: 0
            [1, 1, 1, 1],  # zero area inside: 0
            [3, 3, 1, 1],  # inverted: area 0
        ],
        float,
    )
    np.testing.assert_allclose(box_iou(box, others), [1, 1 / 3, 0.25, 0, 0, 0, 0])
    assert box_iou(np.array([1.0, 1.0, 1.0, 1.0]), np.array([[1.0, 1.0, 1.0, 1.0]])).tolist() == [0.0]


def test_empty_input() -> None:
    kept = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)
    assert kept.shape == (0,) and kept.dtype == np.int64


def test_single_box() -> None:
    assert as_list(nms(np.array([[1, 2, 3, 4]], np.float32), np.array([0.3], np.float32), 0.5)) == [0]


def test_identical_boxes_keep_the_best() -> None:
    boxes = np.tile(np.array([[10, 10, 50, 50]], np.float32), (4, 1))
    assert as_list(nms(boxes, np.array([0.2, 0.9, 0.5, 0.7], np.float32), 0.5)) == [1]
    # Even a threshold of 0.999 drops a perfect overlap; a threshold of 1 keeps everything.
    assert as_list(nms(boxes, np.array([0.2, 0.9, 0.5, 0.7], np.float32), 0.999)) == [1]
    assert as_list(nms(boxes, np.array([0.2, 0.9, 0.5, 0.7], np.float32), 1.0)) == [1, 3, 2, 0]


def test_disjoint_boxes_all_kept_highest_first() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30], [10, 10, 20, 20]], np.float32)
    scores = np.array([0.5, 0.8, 0.6, 0.9], np.float32)
    # The last box only touches the first along a corner: zero intersection.
    assert as_list(nms(boxes, scores, 0.0)) == [3, 1, 2, 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_boundary_equal_is_kept_greater_is_dropped(dtype: type) -> None:
    # IoU exactly 0.5 (intersection 1, union 2) and exactly 0.25, both representable exactly.
    boxes: np.ndarray = np.array([[0, 0, 2, 1], [0, 0, 1, 1], [0, 0, 4, 1]], dtype)
    scores: np.ndarray = np.array([0.9, 0.8, 0.1], dtype)
    assert box_iou(boxes[0], boxes[1:]).tolist() == [0.5, 0.5]
    assert as_list(nms(boxes[:2], scores[:2], 0.5)) == [0, 1]  # equal: kept
    assert as_list(nms(boxes[:2], scores[:2], 0.4999)) == [0]  # greater: dropped
    pair: np.ndarray = np.array([[0, 0, 4, 1], [0, 0, 1, 1]], dtype)
    assert as_list(nms(pair, scores[:2], 0.25)) == [0, 1]
    assert as_list(nms(pair, scores[:2], 0.2499)) == [0]


def test_suppression_is_only_by_kept_boxes() -> None:
    """A overlaps B, B overlaps C, A does not overlap C: A suppresses B, so C survives."""
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert as_list(nms(boxes, scores, 0.3)) == [0, 2]


def test_zero_area_boxes() -> None:
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10], [3, 3, 3, 8]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # Degenerate boxes overlap nothing (IoU 0, never NaN), so nothing suppresses anything.
    assert as_list(nms(boxes, scores, 0.0)) == [0, 1, 2, 3]


def test_score_ties_keep_input_order() -> None:
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(6)], np.float32)
    scores = np.array([0.5, 0.7, 0.5, 0.7, 0.5, 0.9], np.float32)
    assert as_list(nms(boxes, scores, 0.5)) == [5, 1, 3, 0, 2, 4]
    # Overlapping tied boxes: the earlier one wins.
    same = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10]], np.float32)
    assert as_list(nms(same, np.array([0.5, 0.5, 0.5], np.float32), 0.5)) == [0]


def test_max_keep() -> None:
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(5)], np.float32)
    scores = np.array([0.1, 0.5, 0.3, 0.9, 0.7], np.float32)
    assert as_list(nms(boxes, scores, 0.5, max_keep=2)) == [3, 4]
    assert as_list(nms(boxes, scores, 0.5, max_keep=0)) == []
    assert as_list(nms(boxes, scores, 0.5, max_keep=10)) == [3, 4, 1, 2, 0]


def random_boxes(rng: np.random.Generator, count: int, extent: float = 100.0) -> np.ndarray:
    xy = rng.uniform(0, extent, (count, 2))
    wh = rng.uniform(1, extent / 3, (count, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_matches_brute_force_reference_on_random_boxes() -> None:
    rng = np.random.default_rng(0)
    for trial in range(150):
        count = int(rng.integers(1, 60))
        boxes = random_boxes(rng, count)
        # Coarse scores so that ties happen.
        scores = rng.integers(0, 8, count) / 8 if trial % 2 else rng.uniform(0, 1, count)
        threshold = float(rng.choice([0.0, 0.1, 0.3, 0.45, 0.5, 0.7, 0.9]))
        expected = nms_reference(boxes, scores, threshold)
        assert as_list(nms(boxes, scores, threshold)) == expected
        keep = int(rng.integers(0, 5))
        assert as_list(nms(boxes, scores, threshold, max_keep=keep)) == expected[:keep]
        # float32 inputs, as the pipeline passes them, give the same answer.
        assert as_list(nms(boxes.astype(np.float32), scores.astype(np.float32), threshold)) == nms_reference(
            boxes.astype(np.float32), scores.astype(np.float32), threshold
        )


# ----------------------------------------------------------------------------------------------
# select_faces

IDENTITY = Letterbox(1.0, 1.0, 0.0, 0.0)


def candidate(
    box: tuple[float, float, float, float], score: float, landmarks: Sequence[float] | None = None
) -> list[float]:
    x0, y0, x1, y1 = box
    if landmarks is None:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        landmarks = [cx - 2, cy - 2, cx + 2, cy - 2, cx, cy, cx - 2, cy + 2, cx + 2, cy + 2]
    return [x0, y0, x1, y1, score, *landmarks]


def cands(*rows: list[float]) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 15)


def test_select_faces_threshold_is_inclusive_and_output_sorted() -> None:
    c = cands(
        candidate((0, 0, 10, 10), 0.49),
        candidate((20, 0, 30, 10), 0.5),
        candidate((40, 0, 50, 10), 0.95),
        candidate((60, 0, 70, 10), 0.7),
    )
    out = select_faces(c, Options(min_confidence=0.5), IDENTITY, 100, 100)
    assert out.dtype == np.float32 and out.shape == (3, 15) and out.flags.c_contiguous
    np.testing.assert_allclose(out[:, 4], [0.95, 0.7, 0.5])
    np.testing.assert_allclose(out[:, 0], [40, 60, 20])


def test_select_faces_suppresses_overlaps_with_the_request_iou() -> None:
    c = cands(candidate((0, 0, 10, 10), 0.9), candidate((0, 0, 10, 8), 0.8))  # IoU 0.8
    assert len(select_faces(c, Options(iou_threshold=0.5), IDENTITY, 100, 100)) == 1
    assert len(select_faces(c, Options(iou_threshold=0.85), IDENTITY, 100, 100)) == 2


def test_select_faces_maps_boxes_and_landmarks_through_the_letterbox() -> None:
    # A 1280x720 image in a 640x640 input: gain 2, 140 rows of padding on top.
    transform = Letterbox(gain_x=2.0, gain_y=2.0, offset_x=0.0, offset_y=140.0)
    lm = [110, 160, 130, 160, 120, 170, 112, 180, 128, 180]
    out = select_faces(cands(candidate((100, 150, 140, 190), 0.9, lm)), Options(), transform, 1280, 720)
    np.testing.assert_allclose(out[0, :4], [200, 20, 280, 100])
    np.testing.assert_allclose(out[0, 5:], [220, 40, 260, 40, 240, 60, 224, 80, 256, 80])
    assert out[0, 4] == pytest.approx(0.9)
    # Different gains per axis go to the right columns.
    skew = Letterbox(gain_x=3.0, gain_y=0.5, offset_x=10.0, offset_y=0.0)
    out = select_faces(cands(candidate((20, 20, 40, 60), 0.9, lm)), Options(), skew, 10_000, 10_000)
    np.testing.assert_allclose(out[0, :4], [30, 10, 90, 30])
    np.testing.assert_allclose(out[0, 5::2], (np.array(lm[0::2]) - 10) * 3)
    np.testing.assert_allclose(out[0, 6::2], np.array(lm[1::2]) * 0.5)


def test_select_faces_clamps_to_the_image() -> None:
    lm = [-5, 3, 105, 3, 50, -1, 50, 250, 0, 0]
    c = cands(candidate((-10, -20, 110, 250), 0.9, lm))
    out = select_faces(c, Options(), IDENTITY, 100, 200)
    np.testing.assert_allclose(out[0, :4], [0, 0, 100, 200])
    np.testing.assert_allclose(out[0, 5:], [0, 3, 100, 3, 50, 0, 50, 200, 0, 0])


def test_select_faces_min_face_size_uses_the_shorter_side_in_client_pixels() -> None:
    transform = Letterbox(gain_x=2.0, gain_y=2.0, offset_x=0.0, offset_y=0.0)
    c = cands(
        candidate((0, 0, 10, 30), 0.9),  # 20 x 60 client pixels: shorter side 20
        candidate((50, 0, 70, 19), 0.8),  # 40 x 38
        candidate((100, 0, 120, 20), 0.7),  # 40 x 40
        candidate((190, 0, 230, 40), 0.6),  # 80 x 80 but clamped at x = 400: 20 x 80
    )
    out = select_faces(c, Options(min_face_size=40), transform, 400, 400)
    np.testing.assert_allclose(out[:, 4], [0.7])
    out = select_faces(c, Options(min_face_size=20), transform, 400, 400)
    np.testing.assert_allclose(out[:, 4], [0.9, 0.8, 0.7, 0.6])
    out = select_faces(c, Options(min_face_size=38), transform, 400, 400)
    np.testing.assert_allclose(out[:, 4], [0.8, 0.7])


def test_select_faces_max_faces_keeps_the_best() -> None:
    rng = np.random.default_rng(1)
    scores = rng.permutation(np.linspace(0.5, 0.99, 30))
    c = cands(*[candidate((i * 20, 0, i * 20 + 10, 10), float(s)) for i, s in enumerate(scores)])
    out = select_faces(c, Options(max_faces=5), IDENTITY, 1000, 100)
    np.testing.assert_allclose(out[:, 4], np.sort(scores)[::-1][:5], rtol=1e-6)
    assert len(select_faces(c, Options(max_faces=1000), IDENTITY, 1000, 100)) == 30


def test_select_faces_nothing_found() -> None:
    out = select_faces(cands(candidate((0, 0, 10, 10), 0.1)), Options(), IDENTITY, 100, 100)
    assert out.shape == (0, 15) and out.dtype == np.float32
    out = select_faces(np.zeros((0, 15), np.float32), Options(), IDENTITY, 100, 100)
    assert out.shape == (0, 15)


def test_select_faces_caps_nms_candidates_but_keeps_the_best(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faces_module, "MAX_NMS_CANDIDATES", 50)
    rng = np.random.default_rng(2)
    count = 400
    scores = rng.permutation(np.linspace(0.5, 0.99, count))
    c = cands(*[candidate((i * 20, 0, i * 20 + 10, 10), float(s)) for i, s in enumerate(scores)])
    out = select_faces(c, Options(max_faces=1000), IDENTITY, 20 * count, 100)
    assert len(out) == 50
    np.testing.assert_allclose(out[:, 4], np.sort(scores)[::-1][:50], rtol=1e-6)
