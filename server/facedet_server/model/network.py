"""What our PyTorch YOLOv5-Face (`facedet_nn`) is as a served model: the `ModelSpec` its exports
carry and the torch runtime serves it with. Reads the network's attributes only, so this module
needs no torch."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from facedet_server.model.spec import BUILTIN_SPECS, ModelSpec

INPUT_NAME = "images"
OUTPUT_NAME = "candidates"
MAX_SIDE = 1920

OUTPUT_LAYOUT = (
    "candidates: (N, K, 15) float32 rows [cx, cy, w, h, score, lx0, ly0, lx1, ly1, lx2, ly2, lx3, ly3, "
    "lx4, ly4] in network-input pixels, before thresholding and NMS; score = sigmoid(obj) * sigmoid(face); "
    "landmarks: left eye, right eye, nose, mouth left, mouth right"
)


class Network(Protocol):
    """The attributes of `facedet_nn.model.YoloFace` a spec is made from."""

    @property
    def config(self) -> Any: ...  # facedet_nn.configs.ModelConfig: name, to_dict()

    @property
    def strides(self) -> tuple[int, ...]: ...

    @property
    def anchors(self) -> tuple[tuple[tuple[float, float], ...], ...]: ...

    @property
    def num_landmarks(self) -> int: ...


def size_multiple(model: Network) -> int:
    return max(model.strides)


def network_spec(
    model: Network, *, source: str, source_sha256: str, extra: Mapping[str, str] | None = None
) -> ModelSpec:
    """The decoding network's description: dynamic batch and size, (N, K, 15) candidates out.
    `extra` adds producer details (the converter's version, opset, precision) to the metadata."""
    multiple = size_multiple(model)
    return ModelSpec(
        name=model.config.name,
        strides=model.strides,
        anchors=model.anchors,
        input_name=INPUT_NAME,
        output_names=(OUTPUT_NAME,),
        output_kind="decoded",
        num_landmarks=model.num_landmarks,
        input_height=None,
        input_width=None,
        batch_size=None,
        size_multiple=multiple,
        color_order="RGB",
        scale=1.0 / 255.0,
        pad_value=114,
        source=source,
        source_sha256=source_sha256,
        extra={
            **(extra or {}),
            "config": json.dumps(model.config.to_dict(), separators=(",", ":")),
            "input_layout": (
                f"{INPUT_NAME}: (N, 3, H, W) float32, RGB, value/255, letterboxed with gray 114; H and W "
                f"multiples of {multiple} from {multiple} to {MAX_SIDE}"
            ),
            "output_layout": OUTPUT_LAYOUT,
        },
    )


def describe_source(path: Path, sha256: str) -> str:
    """A known upstream file is named by where it comes from, anything else by its file name."""
    known = BUILTIN_SPECS.get(sha256)
    return known.source if known is not None else path.name
