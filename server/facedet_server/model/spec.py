"""What the server needs to know about a model, in one place: anchors, strides, I/O names, input.

A model file describes itself through ONNX `metadata_props` (our converter writes them, see
`to_metadata`). The frozen upstream export carries none, so it is recognised by its
output names and described by `UPSTREAM_YOLOV5N_05`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

OutputKind = Literal["raw_heads", "decoded"]

METADATA_KEY = "facedet.model_spec"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    # Per detection layer: its stride in input pixels and its anchors as (w, h) pixel pairs.
    strides: tuple[int, ...]
    anchors: tuple[tuple[tuple[float, float], ...], ...]
    input_name: str
    output_names: tuple[str, ...]
    # raw_heads: one (N, A, H/s, W/s, 5 + 2*L + 1) tensor per stride, to decode with decode_head.
    # decoded: one (N, K, 15) tensor of [cx, cy, w, h, score, 10 landmark coords] in input pixels.
    output_kind: OutputKind = "raw_heads"
    num_landmarks: int = 5
    # Fixed input size, or None where the model takes any multiple of `size_multiple`.
    input_height: int | None = 640
    input_width: int | None = 640
    # Fixed batch size, or None for a dynamic batch axis.
    batch_size: int | None = 1
    size_multiple: int = 32
    # Input encoding: NCHW float32, RGB, value/255, letterbox padding colour.
    color_order: str = "RGB"
    scale: float = 1.0 / 255.0
    pad_value: int = 114
    source: str = ""
    source_sha256: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.anchors):
            raise ValueError(f"{self.name}: {len(self.strides)} strides but {len(self.anchors)} anchor sets")

    @property
    def dynamic_shape(self) -> bool:
        return self.input_height is None or self.input_width is None

    @property
    def dynamic_batch(self) -> bool:
        return self.batch_size is None

    @property
    def values_per_anchor(self) -> int:
        return 5 + 2 * self.num_landmarks + 1

    def to_metadata(self) -> dict[str, str]:
        """ONNX metadata_props entries (string -> string) describing this model."""
        return {METADATA_KEY: json.dumps(asdict(self), sort_keys=True)}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> ModelSpec | None:
        raw = props.get(METADATA_KEY)
        if raw is None:
            return None
        data = json.loads(raw)
        data["strides"] = tuple(int(s) for s in data["strides"])
        data["anchors"] = tuple(tuple((float(w), float(h)) for w, h in level) for level in data["anchors"])
        data["output_names"] = tuple(data["output_names"])
        return cls(**data)


# Anchors from upstream models/yolov5n-0.5.yaml (shared by the whole non-P6 family).
YOLOV5_FACE_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((4, 5), (8, 10), (13, 16)),
    ((23, 29), (43, 55), (73, 105)),
    ((146, 217), (231, 300), (335, 433)),
)

UPSTREAM_YOLOV5N_05_SHA256 = "ffeda7b88900bd8fb3c3cd71876d199aca389a1378d11e07d22faf4c5fc6b4ae"

# The official upstream export (torch2tensorrt/yolov5n-0.5.onnx): batch 1 and 640x640 are baked in.
UPSTREAM_YOLOV5N_05 = ModelSpec(
    name="yolov5n-0.5",
    strides=(8, 16, 32),
    anchors=YOLOV5_FACE_ANCHORS,
    input_name="data",
    output_names=("stride_8", "stride_16", "stride_32"),
    output_kind="raw_heads",
    input_height=640,
    input_width=640,
    batch_size=1,
    source="deepcam-cn/yolov5-face@b8d9b0bb torch2tensorrt/yolov5n-0.5.onnx",
    source_sha256=UPSTREAM_YOLOV5N_05_SHA256,
)

BUILTIN_SPECS: dict[str, ModelSpec] = {UPSTREAM_YOLOV5N_05_SHA256: UPSTREAM_YOLOV5N_05}


def resolve_spec(
    metadata: dict[str, str], sha256: str, input_name: str, output_names: list[str]
) -> ModelSpec:
    """The spec a model file declares, else the built-in one for a known upstream file."""
    spec = ModelSpec.from_metadata(metadata)
    if spec is not None:
        return spec
    if sha256 in BUILTIN_SPECS:
        return BUILTIN_SPECS[sha256]
    # An upstream-style export we have not seen byte for byte (re-exported, say): accept it when
    # its I/O names match the upstream layout, since decoding depends on nothing else.
    if input_name == "data" and output_names == ["stride_8", "stride_16", "stride_32"]:
        return UPSTREAM_YOLOV5N_05
    raise ValueError(
        f"model has no '{METADATA_KEY}' metadata and is not a known upstream export "
        f"(input {input_name!r}, outputs {output_names}); convert it with `facedet convert`"
    )
