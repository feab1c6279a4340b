"""The YOLOv5-Face model family as data: the upstream model configs (deepcam-cn/yolov5-face
`models/*.yaml`), written out as Python.

A layer is `(source, repeats, block, args)` exactly as in the upstream yaml: `source` is -1 for
the previous layer, a layer index, or a tuple of them; `repeats` is scaled by `depth_multiple`;
the first arg of a conv-like block is its output width before `width_multiple`. model.py turns a
config into modules. Checkpoints carry their own config in this same form (`Model.yaml`), so
custom upstream-style configs load too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Source = int | tuple[int, ...]
LayerSpec = tuple[Source, int, str, tuple[Any, ...]]


@dataclass(frozen=True)
class ModelConfig:
    name: str
    depth_multiple: float
    width_multiple: float
    # Per detection level, anchor (w, h) pairs flattened, in input pixels: (w0, h0, w1, h1, ...).
    anchors: tuple[tuple[float, ...], ...]
    backbone: tuple[LayerSpec, ...]
    head: tuple[LayerSpec, ...]
    num_classes: int = 1

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return self.backbone + self.head

    def to_dict(self) -> dict[str, Any]:
        """Upstream yaml layout (what a checkpoint's `Model.yaml` holds)."""
        return {
            "nc": self.num_classes,
            "depth_multiple": self.depth_multiple,
            "width_multiple": self.width_multiple,
            "anchors": [list(level) for level in self.anchors],
            "backbone": [_layer_to_list(layer) for layer in self.backbone],
            "head": [_layer_to_list(layer) for layer in self.head],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str) -> ModelConfig:
        """From an upstream yaml dict; raises ValueError naming what is malformed."""
        try:
            anchors = tuple(tuple(float(v) for v in level) for level in data["anchors"])
            backbone = tuple(_layer_from_list(row) for row in data["backbone"])
            head = tuple(_layer_from_list(row) for row in data["head"])
            return cls(
                name=name,
                depth_multiple=float(data["depth_multiple"]),
                width_multiple=float(data["width_multiple"]),
                anchors=anchors,
                backbone=backbone,
                head=head,
                num_classes=int(data.get("nc", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"model config {name!r} is malformed: {exc!r}") from None


def _layer_to_list(layer: LayerSpec) -> list[Any]:
    source, repeats, block, args = layer
    return [list(source) if isinstance(source, tuple) else source, repeats, block, [_thawed(a) for a in args]]


def _thawed(value: Any) -> Any:
    return [_thawed(v) for v in value] if isinstance(value, tuple) else value


def _layer_from_list(row: Any) -> LayerSpec:
    source, repeats, block, args = row
    src: Source = tuple(int(s) for s in source) if isinstance(source, list | tuple) else int(source)
    return (src, int(repeats), str(block), tuple(_frozen(a) for a in args))


def _frozen(value: Any) -> Any:
    """Lists (as yaml gives them) -> tuples, so configs compare and hash as values."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


ANCHORS_P5 = (
    (4, 5, 8, 10, 13, 16),  # P3/8
    (23, 29, 43, 55, 73, 105),  # P4/16
    (146, 217, 231, 300, 335, 433),  # P5/32
)
ANCHORS_P6 = (
    (6, 7, 9, 11, 13, 16),  # P3/8
    (18, 23, 26, 33, 37, 47),  # P4/16
    (54, 67, 77, 104, 112, 154),  # P5/32
    (174, 238, 258, 355, 445, 568),  # P6/64
)

# ShuffleNetV2 backbone (yolov5n, yolov5n-0.5): a stride-4 stem, then stages at strides 8/16/32.
SHUFFLE_BACKBONE: tuple[LayerSpec, ...] = (
    (-1, 1, "StemBlock", (32, 3, 2)),  # 0  P2/4
    (-1, 1, "ShuffleV2Block", (128, 2)),  # 1  P3/8
    (-1, 3, "ShuffleV2Block", (128, 1)),  # 2
    (-1, 1, "ShuffleV2Block", (256, 2)),  # 3  P4/16
    (-1, 7, "ShuffleV2Block", (256, 1)),  # 4
    (-1, 1, "ShuffleV2Block", (512, 2)),  # 5  P5/32
    (-1, 3, "ShuffleV2Block", (512, 1)),  # 6
)
# A light PAN neck of constant width.
SHUFFLE_HEAD: tuple[LayerSpec, ...] = (
    (-1, 1, "Conv", (128, 1, 1)),  # 7
    (-1, 1, "nn.Upsample", (None, 2, "nearest")),  # 8
    ((-1, 4), 1, "Concat", (1,)),  # 9  + backbone P4
    (-1, 1, "C3", (128, False)),  # 10
    (-1, 1, "Conv", (128, 1, 1)),  # 11
    (-1, 1, "nn.Upsample", (None, 2, "nearest")),  # 12
    ((-1, 2), 1, "Concat", (1,)),  # 13 + backbone P3
    (-1, 1, "C3", (128, False)),  # 14 P3/8 out
    (-1, 1, "Conv", (128, 3, 2)),  # 15
    ((-1, 11), 1, "Concat", (1,)),  # 16 + head P4
    (-1, 1, "C3", (128, False)),  # 17 P4/16 out
    (-1, 1, "Conv", (128, 3, 2)),  # 18
    ((-1, 7), 1, "Concat", (1,)),  # 19 + head P5
    (-1, 1, "C3", (128, False)),  # 20 P5/32 out
    ((14, 17, 20), 1, "Detect", ("nc", "anchors")),  # 21
)

# CSP backbone (yolov5s/m/l): stem, C3 stages, SPP with small pools (faces are small).
CSP_BACKBONE: tuple[LayerSpec, ...] = (
    (-1, 1, "StemBlock", (64, 3, 2)),  # 0  P2/4
    (-1, 3, "C3", (128,)),  # 1
    (-1, 1, "Conv", (256, 3, 2)),  # 2  P3/8
    (-1, 9, "C3", (256,)),  # 3
    (-1, 1, "Conv", (512, 3, 2)),  # 4  P4/16
    (-1, 9, "C3", (512,)),  # 5
    (-1, 1, "Conv", (1024, 3, 2)),  # 6  P5/32
    (-1, 1, "SPP", (1024, (3, 5, 7))),  # 7
    (-1, 3, "C3", (1024, False)),  # 8
)
CSP_HEAD: tuple[LayerSpec, ...] = (
    (-1, 1, "Conv", (512, 1, 1)),  # 9
    (-1, 1, "nn.Upsample", (None, 2, "nearest")),  # 10
    ((-1, 5), 1, "Concat", (1,)),  # 11 + backbone P4
    (-1, 3, "C3", (512, False)),  # 12
    (-1, 1, "Conv", (256, 1, 1)),  # 13
    (-1, 1, "nn.Upsample", (None, 2, "nearest")),  # 14
    ((-1, 3), 1, "Concat", (1,)),  # 15 + backbone P3
    (-1, 3, "C3", (256, False)),  # 16 P3/8 out
    (-1, 1, "Conv", (256, 3, 2)),  # 17
    ((-1, 13), 1, "Concat", (1,)),  # 18 + head P4
    (-1, 3, "C3", (512, False)),  # 19 P4/16 out
    (-1, 1, "Conv", (512, 3, 2)),  # 20
    ((-1, 9), 1, "Concat", (1,)),  # 21 + head P5
    (-1, 3, "C3", (1024, False)),  # 22 P5/32 out
    ((16, 19, 22), 1, "Detect", ("nc", "anchors")),  # 23
)

# P6 variants add a stride-64 level for large faces in high-resolution input.
SHUFFLE_P6_BACKBONE: tuple[LayerSpec, ...] = (
    (-1, 1, "StemBlock", (32, 3, 2)),  # 0  P2/4
    (-1, 1, "ShuffleV2Block", (128, 2)),  # 1  P3/8
    (-1, 3, "ShuffleV2Block", (128, 1)),  # 2
    (-1, 1, "ShuffleV2Block", (256, 2)),  # 3  P4/16
    (-1, 7, "ShuffleV2Block", (256, 1)),  # 4
    (-1, 1, "ShuffleV2Block", (384, 2)),  # 5  P5/32
    (-1, 3, "ShuffleV2Block", (384, 1)),  # 6
    (-1, 1, "ShuffleV2Block", (512, 2)),  # 7  P6/64
    (-1, 3, "ShuffleV2Block", (512, 1)),  # 8
)
SHUFFLE_P6_HEAD: tuple[LayerSpec, ...] = (
    (-1, 1, "Conv", (128, 1, 1)),  # 9
    (-1, 1, "nn.Upsample", (None, 2, "nearest")),  # 10
    ((-1, 6), 1, "Concat", (1,)),  # 11 + backbone P5
    (-1, 1, "C3", (128, False)),  # 12
    (-1, 1, "Conv", (128, 1, 1)),  # 13
    (-1, 1, "nn.Upsample", (None, 2, "nearest")),  # 14
    ((-1, 4), 1, "Concat", (1,)),  # 15 + backbone P4
    (-1, 1, "C3", (128, False)),  # 16
    (-1, 1, "Conv", (128, 1, 1)),  # 17
    (-1, 1, "nn.Upsample", (None, 2, "nearest")),  # 18
    ((-1, 2), 1, "Concat", (1,)),  # 19 + backbone P3
    (-1, 1, "C3", (128, False)),  # 20 P3/8 out
    (-1, 1, "Conv", (128, 3, 2)),  # 21
    ((-1, 17), 1, "Concat", (1,)),  # 22 + head P4
    (-1, 1, "C3", (128, False)),  # 23 P4/16 out
    (-1, 1, "Conv", (128, 3, 2)),  # 24
    ((-1, 13), 1, "Concat", (1,)),  # 25 + head P5
    (-1, 1, "C3", (128, False)),  # 26 P5/32 out
    (-1, 1, "Conv", (128, 3, 2)),  # 27
    ((-1, 9), 1, "Concat", (1,)),  # 28 + head P6
    (-1, 1, "C3", (128, False)),  # 29 P6/64 out
    ((20, 23, 26, 29), 1, "Detect", ("nc", "anchors")),  # 30
)

CSP_P6_BACKBONE: tuple[LayerSpec, ...] = (
    (-1, 1, "StemBlock", (64, 3, 2)),  # 0  P2/4
    (-1, 3, "C3", (128,)),  # 1
    (-1, 1, "Conv", (256, 3, 2)),  # 2  P3/8
    (-1, 9, "C3", (256,)),  # 3
    (-1, 1, "Conv", (512, 3, 2)),  # 4  P4/16
    (-1, 9, "C3", (512,)),  # 5
    (-1, 1, "Conv", (768, 3, 2)),  # 6  P5/32
    (-1, 3, "C3", (768,)),  # 7
    (-1, 1, "Conv", (1024, 3, 2)),  # 8  P6/64
    (-1, 1, "SPP", (1024, (3, 5, 7))),  # 9
    (-1, 3, "C3", (1024, False)),  # 10
)
CSP_P6_HEAD: tuple[LayerSpec, ...] = (
    (-1, 1, "Conv", (768, 1, 1)),  # 11
    (-1, 1, "nn.Upsample", (None, 2, "nearest")),  # 12
    ((-1, 7), 1, "Concat", (1,)),  # 13 + backbone P5
    (-1, 3, "C3", (768, False)),  # 14
    (-1, 1, "Conv", (512, 1, 1)),  # 15
    (-1, 1, "nn.Upsample", (None, 2, "nearest")),  # 16
    ((-1, 5), 1, "Concat", (1,)),  # 17 + backbone P4
    (-1, 3, "C3", (512, False)),  # 18
    (-1, 1, "Conv", (256, 1, 1)),  # 19
    (-1, 1, "nn.Upsample", (None, 2, "nearest")),  # 20
    ((-1, 3), 1, "Concat", (1,)),  # 21 + backbone P3
    (-1, 3, "C3", (256, False)),  # 22 P3/8 out
    (-1, 1, "Conv", (256, 3, 2)),  # 23
    ((-1, 19), 1, "Concat", (1,)),  # 24 + head P4
    (-1, 3, "C3", (512, False)),  # 25 P4/16 out
    (-1, 1, "Conv", (512, 3, 2)),  # 26
    ((-1, 15), 1, "Concat", (1,)),  # 27 + head P5
    (-1, 3, "C3", (768, False)),  # 28 P5/32 out
    (-1, 1, "Conv", (768, 3, 2)),  # 29
    ((-1, 11), 1, "Concat", (1,)),  # 30 + head P6
    (-1, 3, "C3", (1024, False)),  # 31 P6/64 out
    ((22, 25, 28, 31), 1, "Detect", ("nc", "anchors")),  # 32
)


def _config(
    name: str,
    depth: float,
    width: float,
    anchors: tuple[tuple[float, ...], ...],
    backbone: tuple[LayerSpec, ...],
    head: tuple[LayerSpec, ...],
) -> ModelConfig:
    return ModelConfig(name, depth, width, anchors, backbone, head)


# name: (depth_multiple, width_multiple) as upstream publishes them.
CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        _config("yolov5n-0.5", 1.0, 0.5, ANCHORS_P5, SHUFFLE_BACKBONE, SHUFFLE_HEAD),
        _config("yolov5n", 1.0, 1.0, ANCHORS_P5, SHUFFLE_BACKBONE, SHUFFLE_HEAD),
        # yolov5n's architecture under the name of its published weights (the ncnn yolov5n-face
        # files), so exports of them are served as yolov5n-face. After yolov5n: recognising an
        # ONNX file or checkpoint by its layers still says yolov5n.
        _config("yolov5n-face", 1.0, 1.0, ANCHORS_P5, SHUFFLE_BACKBONE, SHUFFLE_HEAD),
        _config("yolov5s", 0.33, 0.5, ANCHORS_P5, CSP_BACKBONE, CSP_HEAD),
        _config("yolov5m", 0.67, 0.75, ANCHORS_P5, CSP_BACKBONE, CSP_HEAD),
        _config("yolov5l", 1.0, 1.0, ANCHORS_P5, CSP_BACKBONE, CSP_HEAD),
        _config("yolov5n6", 1.0, 1.0, ANCHORS_P6, SHUFFLE_P6_BACKBONE, SHUFFLE_P6_HEAD),
        _config("yolov5s6", 0.33, 0.5, ANCHORS_P6, CSP_P6_BACKBONE, CSP_P6_HEAD),
        _config("yolov5m6", 0.67, 0.75, ANCHORS_P6, CSP_P6_BACKBONE, CSP_P6_HEAD),
        _config("yolov5l6", 1.0, 1.0, ANCHORS_P6, CSP_P6_BACKBONE, CSP_P6_HEAD),
    )
}


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}") from None
