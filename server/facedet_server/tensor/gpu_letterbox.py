"""The letterbox as torch functions, so it runs wherever the batch lives (CUDA in production,
CPU in the tests here). The geometry matches `facedet_server.tensor.letterbox` exactly, so faces
agree with the CPU path."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from facedet_server.tensor.letterbox import Letterbox


def letterbox_geometry(w: int, h: int, target_w: int, target_h: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, left, top), rounded exactly as the CPU letterbox rounds."""
    ratio = min(target_w / w, target_h / h)
    new_w = max(1, min(target_w, round(w * ratio)))
    new_h = max(1, min(target_h, round(h * ratio)))
    return new_w, new_h, (target_w - new_w) // 2, (target_h - new_h) // 2


@functools.lru_cache(maxsize=64)
def _area_weights(old: int, new: int) -> np.ndarray:
    """(new, old) matrix of cv2.INTER_AREA shrinking along one axis: output pixel i averages the
    input span [i*s, (i+1)*s), s = old/new, weighting each input pixel by its covered fraction."""
    scale = old / new
    starts = np.arange(new) * scale
    ends = starts + scale
    j = np.arange(old)
    overlap = np.clip(np.minimum(ends[:, None], j[None] + 1) - np.maximum(starts[:, None], j[None]), 0, None)
    weights: np.ndarray = (overlap / scale).astype(np.float32)
    return weights


def area_resize(image: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    """Shrink (..., h, w) images as cv2.INTER_AREA does, as two matrix products (cheap on GPU
    matrix units), so the GPU letterbox feeds the model the pixels the CPU path would."""
    h, w = image.shape[-2:]
    rows = _area_matrix(h, new_h, image.device)
    cols = _area_matrix(w, new_w, image.device)
    return rows @ image.float() @ cols.T


@functools.lru_cache(maxsize=64)
def _area_matrix(old: int, new: int, device: torch.device) -> torch.Tensor:
    # Kept on the device: a video stream's frames all need the same two matrices.
    return torch.from_numpy(_area_weights(old, new)).to(device)


def letterbox_into(
    image: torch.Tensor,
    out: torch.Tensor,
    pad_value: int = 114,
    scale: float = 1.0 / 255.0,
    source_scale: tuple[float, float] = (1.0, 1.0),
) -> Letterbox:
    """Resize a (3, h, w) uint8 image into the (3, H, W) float slot `out`, centred, padded,
    scaled to 0..1, on the image's device."""
    (transform,) = letterbox_batch([image], out[None], pad_value, scale, [source_scale])
    return transform


def letterbox_batch(
    images: list[torch.Tensor],
    out: torch.Tensor,
    pad_value: int = 114,
    scale: float = 1.0 / 255.0,
    source_scales: list[tuple[float, float]] | None = None,
) -> list[Letterbox]:
    """letterbox_into for a whole batch: images of the same size (a video stream, a burst of
    one camera's frames) are resized together with one batched matrix product, so the cost is a
    handful of kernels per distinct size rather than per image."""
    n = len(images)
    scales = source_scales or [(1.0, 1.0)] * n
    target_h, target_w = out.shape[2:]
    # The resize math is FP32 even for an FP16 batch: FP16 intermediates flip pixels by a level
    # near .5 and moved landmarks by over 2 px against the CPU path on the H200.
    out.fill_(pad_value * scale)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((image.shape[1], image.shape[2]), []).append(i)
    transforms: list[Letterbox | None] = [None] * n
    for (h, w), members in groups.items():
        new_w, new_h, left, top = letterbox_geometry(w, h, target_w, target_h)
        stacked = torch.stack([images[i] for i in members]) if len(members) > 1 else images[members[0]][None]
        if (new_w, new_h) == (w, h):
            resized = stacked.float()
        elif new_w < w and h % new_h == 0 and w % new_w == 0:
            # Whole-number shrink factors (720p, 1080p and 4K frames to 640x360): INTER_AREA is
            # then a plain box average, one cheap pooling kernel instead of two matrix products.
            # (Summing uint8 blocks straight to float32 instead measured slower on the H200:
            # torch's generic reduction is poor at a 2x2 window; docs/benchmarks.md, fifth pass.)
            kernel = (h // new_h, w // new_w)
            resized = F.avg_pool2d(stacked.float(), kernel, kernel).round_()
        elif new_w < w:
            resized = area_resize(stacked, new_h, new_w).clamp_(0, 255).round_()
        else:
            resized = F.interpolate(
                stacked.float(), size=(new_h, new_w), mode="bilinear", align_corners=False
            )
            resized = resized.clamp_(0, 255).round_()
        region = resized.mul_(scale)
        if len(members) == n:
            out[:, :, top : top + new_h, left : left + new_w] = region  # casts as it copies
        else:
            index = torch.as_tensor(members, device=out.device)
            out[index, :, top : top + new_h, left : left + new_w] = region.to(out.dtype)
        for i in members:
            transforms[i] = Letterbox(
                gain_x=(w / new_w) * scales[i][0],
                gain_y=(h / new_h) * scales[i][1],
                offset_x=float(left),
                offset_y=float(top),
            )
    return [t for t in transforms if t is not None]
