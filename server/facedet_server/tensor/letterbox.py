"""Letterboxing: resize keeping aspect ratio, pad to the network input, and the inverse map.

`Letterbox` holds the exact affine map between network-input pixels and original-image pixels,
per axis, so that rounding in the resize and any DCT reduction in decoding are undone exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """original = (network - offset) * gain, per axis."""

    gain_x: float
    gain_y: float
    offset_x: float
    offset_y: float

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2k) arrays of interleaved x, y network coordinates to original pixels."""
        out = np.empty_like(xy)
        out[..., 0::2] = (xy[..., 0::2] - self.offset_x) * self.gain_x
        out[..., 1::2] = (xy[..., 1::2] - self.offset_y) * self.gain_y
        return out

    def to_network(self, xy: np.ndarray) -> np.ndarray:
        out = np.empty_like(xy)
        out[..., 0::2] = xy[..., 0::2] / self.gain_x + self.offset_x
        out[..., 1::2] = xy[..., 1::2] / self.gain_y + self.offset_y
        return out


def input_shape_for(
    width: int, height: int, fixed: tuple[int, int] | None, size: int, multiple: int = 32
) -> tuple[int, int]:
    """Network input (width, height) for an image: the model's fixed size, else a rectangle with
    the long side at `size` and the short side rounded up to a multiple of `multiple`."""
    if fixed is not None:
        return fixed
    ratio = size / max(width, height)
    w = min(size, math.ceil(width * ratio / multiple) * multiple)
    h = min(size, math.ceil(height * ratio / multiple) * multiple)
    return max(w, multiple), max(h, multiple)


def letterbox(
    pixels: np.ndarray,
    target_w: int,
    target_h: int,
    pad_value: int = 114,
    source_scale: tuple[float, float] = (1.0, 1.0),
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """Fit an (h, w, 3) uint8 image into target_w x target_h, centred, padded with pad_value.

    `source_scale` is the (x, y) original-pixels-per-pixel of `pixels` (from a DCT-reduced
    decode) so the returned map goes all the way back to the client's image.
    """
    h, w = pixels.shape[:2]
    ratio = min(target_w / w, target_h / h)
    new_w = max(1, min(target_w, round(w * ratio)))
    new_h = max(1, min(target_h, round(h * ratio)))
    left = (target_w - new_w) // 2
    top = (target_h - new_h) // 2
    if out is None:
        out = np.empty((target_h, target_w, 3), np.uint8)
    out[:top] = pad_value
    out[top + new_h :] = pad_value
    out[top : top + new_h, :left] = pad_value
    out[top : top + new_h, left + new_w :] = pad_value
    region = out[top : top + new_h, left : left + new_w]
    if (new_w, new_h) == (w, h):
        region[...] = pixels
    else:
        # INTER_AREA when shrinking avoids aliasing (as upstream does), LINEAR when enlarging.
        interp = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
        region[...] = cv2.resize(pixels, (new_w, new_h), interpolation=interp)
    transform = Letterbox(
        gain_x=(w / new_w) * source_scale[0],
        gain_y=(h / new_h) * source_scale[1],
        offset_x=float(left),
        offset_y=float(top),
    )
    return out, transform


def to_tensor(canvas: np.ndarray, out: np.ndarray, scale: float = 1.0 / 255.0) -> None:
    """Write an (h, w, 3) uint8 canvas into a (3, h, w) float32 slot, scaled to 0..1."""
    np.multiply(canvas.transpose(2, 0, 1), np.float32(scale), out=out, casting="unsafe")
