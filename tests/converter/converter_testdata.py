"""Where the converter tests find the shared data, and a small test network."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SHARED = Path(os.environ.get("FACEDET_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
UPSTREAM_ONNX = Path(os.environ.get("FACEDET_TEST_MODEL", SHARED / "models" / "yolov5n-0.5.onnx"))
IMAGES = SHARED / "images"
SAMPLE_IMAGES = ("zidane.jpg", "sample.jpg", "bus.jpg", "1.jpg", "test.jpg")

# A small network that uses every block kind, for tests that need a quick export or a custom config.
TINY_LAYERS: dict[str, Any] = {
    "nc": 1,
    "depth_multiple": 1.0,
    "width_multiple": 0.5,
    "anchors": [[4, 5, 8, 10], [23, 29, 43, 55]],
    "backbone": [
        [-1, 1, "Focus", [16, 3]],  # 0  /2
        [-1, 1, "StemBlock", [32, 3, 2]],  # 1  /8
        [-1, 1, "ShuffleV2Block", [64, 2]],  # 2  /16
        [-1, 2, "ShuffleV2Block", [64, 1]],  # 3
        [-1, 1, "Conv", [64, 3, 2]],  # 4  /32
        [-1, 1, "SPPF", [64, 5]],  # 5
        [-1, 1, "SPP", [64, [3, 5, 7]]],  # 6
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],  # 7  /16
        [[-1, 3], 1, "Concat", [1]],  # 8
        [-1, 2, "C3", [64]],  # 9
        [[9, 6], 1, "Detect", ["nc", "anchors"]],  # 10
    ],
}

# Our raw heads against another float32 implementation (see raw_heads).
TOLERANCE = 1e-4


def raw_heads(model: Any, images: Any) -> list[Any]:
    """Our float32 raw heads. Two float32 implementations each round away from the exact result;
    on logits near -17 ONNX Runtime is off by up to 6e-5 and torch's default CPU convolutions
    (oneDNN) by up to 1e-4, so together they can miss 1e-4. torch's reference kernels stay
    within 4e-5 of exact, so the comparison uses those (test_float64_... shows the rest is rounding)."""
    import torch

    mkldnn: Any = torch.backends.mkldnn
    previous = mkldnn.enabled
    mkldnn.enabled = False
    try:
        with torch.no_grad():
            return [h.numpy() for h in model(torch.from_numpy(images))]
    finally:
        mkldnn.enabled = previous
