"""Weights from an ONNX export (upstream's, e.g. torch2tensorrt/yolov5n-0.5.onnx, or our own) onto
our fused model, matched by graph structure.

Upstream exports carry batch norm already folded into the convolutions, and many initializers
have numeric names (the exporter folded them), so names cannot be relied on. The structure can:
the exporter writes nodes in execution order, so the ONNX Conv nodes, in graph order, are our
model's convolutions in forward order. Each pair is checked (kernel, channels, groups, stride,
padding, dilation, and the name where the ONNX one is a real module path) before any weight
is copied; the first disagreement is reported by our layer name and the ONNX node name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facedet_nn.configs import CONFIGS, ModelConfig
from facedet_nn.model import YoloFace


class WeightImportError(ValueError):
    """The weights do not fit the model; the message names the first layer that disagrees."""


@dataclass(frozen=True)
class ConvGeometry:
    out_channels: int
    in_per_group: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    groups: int

    def describe(self) -> str:
        text = (
            f"{self.in_per_group * self.groups}->{self.out_channels} k{self.kernel[0]}x{self.kernel[1]} "
            f"s{self.stride[0]} pad{list(self.padding)}"
        )
        if self.groups > 1:
            text += f" groups={self.groups}"
        if self.dilation != (1, 1):
            text += f" dilation={self.dilation}"
        return text


@dataclass(frozen=True)
class OnnxConv:
    node_name: str
    weight_name: str
    geometry: ConvGeometry
    weight: np.ndarray
    bias: np.ndarray | None


def geometry_of(conv: nn.Conv2d) -> ConvGeometry:
    padding = conv.padding
    if isinstance(padding, str):
        raise WeightImportError(f"convolution with padding={padding!r} has no fixed geometry")
    ph, pw = padding
    return ConvGeometry(
        out_channels=conv.out_channels,
        in_per_group=conv.in_channels // conv.groups,
        kernel=(conv.kernel_size[0], conv.kernel_size[1]),
        stride=(conv.stride[0], conv.stride[1]),
        padding=(int(ph), int(pw), int(ph), int(pw)),
        dilation=(conv.dilation[0], conv.dilation[1]),
        groups=conv.groups,
    )


def read_onnx_convs(path: Path) -> list[OnnxConv]:
    """The Conv nodes of an ONNX file in graph order, with their weights as float32 arrays."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    tensors: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # some exporters store weights as Constant nodes
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = numpy_helper.to_array(attr.t)
    convs: list[OnnxConv] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "Conv":
            continue
        name = node.name or f"Conv#{index}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise WeightImportError(
                f"ONNX node {name} uses auto_pad={attrs['auto_pad']!r}, which we do not map"
            )
        weight_name = node.input[1]
        if weight_name not in tensors:
            raise WeightImportError(f"ONNX node {name}: weight {weight_name!r} is computed, not stored")
        weight = tensors[weight_name].astype(np.float32)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in tensors:
                raise WeightImportError(f"ONNX node {name}: bias {node.input[2]!r} is computed, not stored")
            bias = tensors[node.input[2]].astype(np.float32)
        groups = int(attrs.get("group", 1))
        kernel = tuple(int(k) for k in attrs.get("kernel_shape", weight.shape[2:]))
        pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
        stride = tuple(int(s) for s in attrs.get("strides", (1, 1)))
        dilation = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
        if weight.ndim != 4 or len(kernel) != 2 or len(pads) != 4:
            raise WeightImportError(
                f"ONNX node {name} is not a 2-D convolution (weight {list(weight.shape)})"
            )
        geometry = ConvGeometry(
            out_channels=weight.shape[0],
            in_per_group=weight.shape[1],
            kernel=(kernel[0], kernel[1]),
            stride=(stride[0], stride[1]),
            padding=(pads[0], pads[1], pads[2], pads[3]),
            dilation=(dilation[0], dilation[1]),
            groups=groups,
        )
        convs.append(OnnxConv(name, weight_name, geometry, weight, bias))
    return convs


def convs_in_forward_order(model: YoloFace) -> list[tuple[str, nn.Conv2d]]:
    """Our convolutions in the order forward() runs them (found on a meta-device twin, which
    costs no memory or arithmetic)."""
    with torch.device("meta"):
        twin = YoloFace(model.config, model.num_landmarks)
    if model.fused:
        twin.fuse_layout()
    order: list[str] = []
    names = {module: name for name, module in twin.named_modules()}
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(names[mod]))
        for m in twin.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        side = 2 * max(twin.strides)
        with torch.no_grad():
            twin(torch.zeros(1, 3, side, side, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    ours = dict(model.named_modules())
    return [(name, ours[name]) for name in order]  # type: ignore[misc]


_MODULE_PATH = re.compile(r"(model\.\d+(?:\.[A-Za-z_0-9]+)*)\.weight$")


def _name_disagrees(onnx_weight_name: str, our_conv_name: str) -> bool:
    """True when the ONNX initializer carries a module path (`...model.7.conv.weight`) that is
    not ours; numeric names (folded by the exporter) say nothing either way."""
    match = _MODULE_PATH.search(onnx_weight_name)
    return match is not None and match.group(1) != our_conv_name


def first_mismatch(model: YoloFace, convs: list[OnnxConv]) -> str | None:
    """None when every ONNX conv fits the model's conv in the same position, else a message."""
    ours = convs_in_forward_order(model)
    for position, ((name, conv), theirs) in enumerate(zip(ours, convs, strict=False)):
        mine = geometry_of(conv)
        if mine != theirs.geometry:
            return (
                f"layer {name} (conv #{position}: {mine.describe()}) does not match ONNX node "
                f"{theirs.node_name} ({theirs.geometry.describe()})"
            )
        if _name_disagrees(theirs.weight_name, name):
            return (
                f"layer {name} (conv #{position}) lines up with ONNX node {theirs.node_name}, whose "
                f"weight is named {theirs.weight_name!r}"
            )
    return count_mismatch(model, ours, [c.node_name for c in convs], "ONNX node", "the ONNX file")


def count_mismatch(
    model: YoloFace, ours: list[tuple[str, nn.Conv2d]], theirs: list[str], kind: str, source: str
) -> str | None:
    """Why our convolutions and a file's (named `theirs`, each a `kind`) differ in number."""
    if len(ours) == len(theirs):
        return None
    extra = (
        f"our first unmatched layer is {ours[len(theirs)][0]}"
        if len(ours) > len(theirs)
        else f"the first unmatched {kind} is {theirs[len(ours)]}"
    )
    return f"{model.config.name} has {len(ours)} convolutions, {source} {len(theirs)}; {extra}"


def load_onnx_convs(model: YoloFace, convs: list[OnnxConv]) -> None:
    """Copy the ONNX weights into `model` (switched to the fused layout), after checking all."""
    if not model.fused:
        model.fuse_layout()
    problem = first_mismatch(model, convs)
    if problem is not None:
        raise WeightImportError(problem)
    with torch.no_grad():
        for (_, conv), theirs in zip(convs_in_forward_order(model), convs, strict=True):
            conv.weight.copy_(torch.from_numpy(theirs.weight))
            if conv.bias is not None:
                bias = theirs.bias if theirs.bias is not None else np.zeros(conv.out_channels, np.float32)
                conv.bias.copy_(torch.from_numpy(bias))


def detect_config(convs: list[OnnxConv]) -> ModelConfig:
    """The built-in config whose fused convolutions match the ONNX file's."""
    problems: list[str] = []
    for config in CONFIGS.values():
        with torch.device("meta"):
            candidate = YoloFace(config)
        candidate.fuse_layout()
        problem = first_mismatch(candidate, convs)
        if problem is None:
            return config
        problems.append(f"  {config.name}: {problem}")
    raise WeightImportError(
        "the ONNX file matches none of the known YOLOv5-Face configs:\n" + "\n".join(problems)
    )


def import_onnx(path: Path, config: ModelConfig | None = None) -> YoloFace:
    """Our fused model carrying the weights of an ONNX export. Without `config`, the config is
    recognised from the file's convolutions."""
    convs = read_onnx_convs(path)
    if not convs:
        raise WeightImportError(f"{path} has no Conv nodes; is it a YOLOv5-Face export?")
    config = config or detect_config(convs)
    # Every parameter of the fused model is a conv weight or bias about to be overwritten, so
    # skip random initialisation: build on the meta device and allocate empty.
    with torch.device("meta"):
        model = YoloFace(config).fuse_layout()
    model.to_empty(device="cpu")
    load_onnx_convs(model, convs)
    return model.eval()
