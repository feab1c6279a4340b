"""Raw YOLOv5-Face head outputs -> candidate faces in network-input pixels.

One candidate row is CANDIDATE_WIDTH floats:
  [x_min, y_min, x_max, y_max, score, lx0, ly0, ..., lx4, ly4]
where score = sigmoid(objectness) * sigmoid(face class) and the landmarks are in the order
left eye, right eye, nose, mouth left, mouth right.
"""

from __future__ import annotations

import numpy as np

from facedet_server.model.spec import ModelSpec

CANDIDATE_WIDTH = 15


def _sigmoid(x: np.ndarray) -> np.ndarray:
    result: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return result


def decode_head(raw: np.ndarray, stride: int, anchors: np.ndarray, num_landmarks: int = 5) -> np.ndarray:
    """Decode one detection layer.

    raw: (N, A, GH, GW, 5 + 2L + 1) float32, straight from the network.
    anchors: (A, 2) anchor (w, h) in input pixels.
    Returns (N, A*GH*GW, 5 + 2L) candidates as described in the module docstring.
    Upstream formulas: xy = (2*sigmoid - 0.5 + grid) * stride, wh = (2*sigmoid)^2 * anchor,
    landmarks = raw * anchor + grid * stride (no sigmoid).
    """
    n, a, gh, gw, _ = raw.shape
    gy, gx = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
    grid = np.stack([gx, gy], axis=-1)[None, None]  # (1, 1, GH, GW, 2)
    anchor = anchors.astype(np.float32).reshape(1, a, 1, 1, 2)

    xy = (_sigmoid(raw[..., 0:2]) * 2.0 - 0.5 + grid) * stride
    wh = (_sigmoid(raw[..., 2:4]) * 2.0) ** 2 * anchor
    score = _sigmoid(raw[..., 4:5]) * _sigmoid(raw[..., 5 + 2 * num_landmarks : 6 + 2 * num_landmarks])
    lm = raw[..., 5 : 5 + 2 * num_landmarks].reshape(n, a, gh, gw, num_landmarks, 2)
    lm = lm * anchor[..., None, :] + grid[..., None, :] * stride

    out = np.empty((n, a, gh, gw, 5 + 2 * num_landmarks), np.float32)
    out[..., 0:2] = xy - wh / 2
    out[..., 2:4] = xy + wh / 2
    out[..., 4:5] = score
    out[..., 5:] = lm.reshape(n, a, gh, gw, 2 * num_landmarks)
    return out.reshape(n, a * gh * gw, 5 + 2 * num_landmarks)


def decode_heads(outputs: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """All layers of a raw-heads model -> (N, K, 15) candidates; decoded models pass through
    after their (cx, cy, w, h) boxes are turned into corners."""
    if spec.output_kind == "decoded":
        (decoded,) = outputs
        out = decoded.astype(np.float32, copy=True)
        out[..., 0:2] = decoded[..., 0:2] - decoded[..., 2:4] / 2
        out[..., 2:4] = decoded[..., 0:2] + decoded[..., 2:4] / 2
        return out
    layers = [
        decode_head(raw, stride, np.asarray(anchors, np.float32), spec.num_landmarks)
        for raw, stride, anchors in zip(outputs, spec.strides, spec.anchors, strict=True)
    ]
    return np.concatenate(layers, axis=1)
