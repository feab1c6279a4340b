"""The GPU path's torch functions, run on the CPU build of torch: they must reproduce the CPU
pipeline (cv2 letterbox, NumPy NMS and select_faces) so both paths find the same faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the GPU path's ops need PyTorch (make test installs the CPU build)"
)

from facedet_server.faces.gpu_select import batched_nms, select_faces_batch  # noqa: E402
from facedet_server.faces.nms import nms  # noqa: E402
from facedet_server.faces.options import Options  # noqa: E402
from facedet_server.faces.select import select_faces  # noqa: E402
from facedet_server.tensor.gpu_letterbox import area_resize, letterbox_into  # noqa: E402
from facedet_server.tensor.letterbox import letterbox  # noqa: E402


@pytest.mark.parametrize(
    ("h", "w", "nh", "nw"), [(720, 1280, 360, 640), (1080, 810, 640, 480), (97, 131, 40, 55)]
)
def test_area_resize_matches_cv2_inter_area(h: int, w: int, nh: int, nw: int) -> None:
    img = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
    got = area_resize(torch.from_numpy(img).permute(2, 0, 1), nh, nw).permute(1, 2, 0).numpy()
    assert np.abs(got - ref).max() <= 0.5 + 1e-3  # cv2 rounds to uint8; we stay in float


@pytest.mark.parametrize(
    ("h", "w", "tw", "th"),
    [
        (768, 1024, 640, 640),
        (1080, 810, 640, 640),
        (300, 200, 640, 640),
        (720, 1280, 640, 384),
        (640, 640, 640, 640),
    ],
)
def test_letterbox_into_matches_cpu_letterbox(h: int, w: int, tw: int, th: int) -> None:
    rng = np.random.default_rng(w)
    # Smooth content: random noise would make cv2's and torch's bilinear rounding disagree more.
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (9, 9), 3)
    canvas, ref_map = letterbox(img, tw, th)
    out = torch.empty((3, th, tw))
    got_map = letterbox_into(torch.from_numpy(img).permute(2, 0, 1), out)
    assert got_map == ref_map
    diff = np.abs(out.numpy() * 255 - canvas.transpose(2, 0, 1))
    # cv2 rounds halves up in fixed point, torch to even: a few levels of 255 at most.
    assert diff.mean() < 0.3 and diff.max() <= 3.0, (diff.mean(), diff.max())


def _random_candidates(rng: np.random.Generator, n: int) -> np.ndarray:
    cx, cy = rng.uniform(0, 640, n), rng.uniform(0, 640, n)
    wh = rng.uniform(8, 120, (n, 2))
    rows = np.zeros((n, 15), np.float32)
    rows[:, 0], rows[:, 1], rows[:, 2:4] = cx, cy, wh
    rows[:, 4] = rng.uniform(0, 1, n)
    rows[:, 5:] = rng.uniform(0, 640, (n, 10))
    return rows


def test_batched_nms_keeps_groups_apart_and_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    cand = _random_candidates(rng, 300)
    boxes = np.concatenate([cand[:, :2] - cand[:, 2:4] / 2, cand[:, :2] + cand[:, 2:4] / 2], axis=1)
    groups = rng.integers(0, 3, 300)
    kept = batched_nms(torch.from_numpy(boxes), torch.from_numpy(cand[:, 4]), torch.from_numpy(groups), 0.45)
    for g in range(3):
        idx = np.nonzero(groups == g)[0]
        ref = idx[nms(boxes[idx], cand[idx, 4], 0.45)]
        got = [int(i) for i in kept if groups[int(i)] == g]
        assert got == ref.tolist()


def test_select_faces_batch_matches_select_faces() -> None:
    from facedet_server.tensor.letterbox import Letterbox

    rng = np.random.default_rng(2)
    batch = np.stack([_random_candidates(rng, 2000) for _ in range(3)])
    options = [Options(0.5, 0.5, 1000, 0.0), Options(0.7, 0.3, 5, 0.0), Options(0.5, 0.5, 1000, 40.0)]
    maps = [Letterbox(2.0, 2.0, 0.0, 140.0), Letterbox(1.6, 1.6, 0.0, 0.0), Letterbox(1.0, 1.0, 80.0, 0.0)]
    sizes = [(1280, 720), (1024, 768), (480, 640)]
    got = select_faces_batch(torch.from_numpy(batch), options, maps, sizes)
    for i in range(3):
        corners = batch[i].copy()
        corners[:, 0:2] = batch[i][:, 0:2] - batch[i][:, 2:4] / 2
        corners[:, 2:4] = batch[i][:, 0:2] + batch[i][:, 2:4] / 2
        ref = select_faces(corners, options[i], maps[i], *sizes[i])
        assert got[i].shape == ref.shape
        np.testing.assert_allclose(got[i], ref, atol=1e-3)


def test_letterbox_batch_equals_letterbox_into_per_image() -> None:
    from facedet_server.tensor.gpu_letterbox import letterbox_batch

    rng = np.random.default_rng(5)
    sizes = [(720, 1280), (720, 1280), (480, 640), (1080, 810), (720, 1280)]
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in sizes]
    scales = [(2.0, 2.0), (1.0, 1.0), (1.0, 1.0), (1.5, 1.5), (1.0, 1.0)]
    batch = torch.empty((len(images), 3, 384, 640))
    maps = letterbox_batch(images, batch, source_scales=scales)
    for image, slot, got_map, scale in zip(images, batch, maps, scales, strict=True):
        single = torch.empty((3, 384, 640))
        assert letterbox_into(image, single, source_scale=scale) == got_map
        assert torch.equal(single, slot)
