"""Weights from an ncnn model (`.param` text graph + `.bin` weights, e.g. the yolov5n-face files
of FeiGeChuanShu/ncnn_Android_face) onto our fused model, matched by graph structure.

The reader is plain NumPy (no `ncnn` package) and follows ncnn's own loaders:

- `.param` (ParamDict text form): the magic 7767517, then `layer_count blob_count`, then one line
  per layer: type, name, input count, output count, input blobs, output blobs, `id=value` params.
  An id of -23300 - k is array param k, written `count,v1,v2,...`; a value with `.` or `e` is a
  float, anything else an int.
- `.bin` (ModelBinFromDataReader): each layer's weights in layer order, no header. `load(n, 0)`
  reads a 4-byte tag first: 0x01306B47 fp16 (n halves, padded to 4 bytes), 0x000D4B38 int8 (n
  bytes, padded), 0x0002C056 or 0 fp32, any other non-zero tag a 256-entry float table followed by
  n uint8 indices (padded). `load(n, 1)` is n untagged fp32 values. Convolution and
  ConvolutionDepthWise load weight_data with `load(6=weight_data_size, 0)`, then, when `5=1`,
  bias_data with `load(0=num_output, 1)`.

ncnn converters keep the ONNX node order, which is our forward order, so the file's convolutions in
order are our convolutions in order, as for ONNX (onnx_weights.py, whose checks and copy this
reuses). Each pair is checked for geometry and for the activation that follows (ncnn's `Swish` is
our SiLU) before any weight is copied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facedet_nn.configs import CONFIGS, ModelConfig
from facedet_nn.model import YoloFace
from facedet_nn.onnx_weights import (
    ConvGeometry,
    OnnxConv,
    WeightImportError,
    convs_in_forward_order,
    count_mismatch,
    geometry_of,
    load_onnx_convs,
)

MAGIC = "7767517"
ARRAY_BASE = -23300

TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056

CONV_TYPES = ("Convolution", "ConvolutionDepthWise")
# Layers whose load_model reads nothing from the .bin. A layer type outside this set and
# CONV_TYPES may read weights in a layout we do not know, so the file is refused rather than
# misread from there on.
WEIGHTLESS_TYPES = frozenset(
    {
        "Input", "Split", "Concat", "Slice", "Crop", "Reshape", "Permute", "Flatten", "ShuffleChannel",
        "Interp", "Pooling", "Noop", "Eltwise", "BinaryOp", "UnaryOp", "Softmax", "Dropout",
        "Swish", "Sigmoid", "ReLU", "Clip", "HardSigmoid", "HardSwish", "Mish", "TanH", "ELU", "GELU",
    }
)  # fmt: skip
# ncnn's activation layers, named as we name activations.
ACTIVATION_LAYERS = {
    "Swish": "silu",
    "Sigmoid": "sigmoid",
    "ReLU": "relu",
    "Clip": "clip",
    "HardSwish": "hardswish",
    "HardSigmoid": "hardsigmoid",
    "Mish": "mish",
    "TanH": "tanh",
    "ELU": "elu",
    "GELU": "gelu",
}
# Convolution param 9 (activation fused into the layer by ncnn's optimizer).
FUSED_ACTIVATIONS = {0: "none", 1: "relu", 2: "leakyrelu", 3: "clip", 4: "sigmoid", 5: "mish", 6: "hardswish"}

ParamValue = int | float | tuple[int | float, ...]

# The YOLOv5-Face model published in ncnn form is yolov5n-face, a name no ncnn graph carries:
# prefer that config when recognising an ncnn file (yolov5n has the same architecture).
PREFERRED_CONFIG = "yolov5n-face"


class NcnnFormatError(ValueError):
    """A .param or .bin file that is not what ncnn would load; the message names where."""


@dataclass(frozen=True)
class NcnnLayer:
    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: Mapping[int, ParamValue]
    line: int  # 1-based line in the .param, for messages

    def int_param(self, key: int, default: int) -> int:
        value = self.params.get(key, default)
        if not isinstance(value, int):
            raise NcnnFormatError(
                f"line {self.line}: layer {self.name} ({self.type}) param {key} should be an int, "
                f"got {value!r}"
            )
        return value


@dataclass(frozen=True)
class NcnnGraph:
    layers: tuple[NcnnLayer, ...]
    blob_count: int


@dataclass(frozen=True)
class NcnnConv:
    """A Convolution / ConvolutionDepthWise layer as a 2-D convolution."""

    layer: NcnnLayer
    geometry: ConvGeometry
    has_bias: bool
    weight_count: int
    activation: str  # what is applied to its output: "none", "silu", ...


@dataclass(frozen=True)
class LayerWeights:
    weight: np.ndarray  # float32, flat, in ncnn order (= PyTorch's OIHW)
    bias: np.ndarray | None  # float32
    encoding: str  # how weight_data was stored: "fp16", "fp32", "table", "int8"


# --- .param ---------------------------------------------------------------------------------


def _parse_number(text: str, where: str) -> int | float:
    try:
        return float(text) if ("." in text or "e" in text.lower()) else int(text)
    except ValueError:
        raise NcnnFormatError(f"{where}: {text!r} is not a number") from None


def _parse_params(tokens: list[str], where: str) -> dict[int, ParamValue]:
    params: dict[int, ParamValue] = {}
    for token in tokens:
        key_text, sep, value_text = token.partition("=")
        if not sep:
            raise NcnnFormatError(f"{where}: {token!r} is not an id=value param")
        try:
            key = int(key_text)
        except ValueError:
            raise NcnnFormatError(f"{where}: param id {key_text!r} is not an integer") from None
        if key <= ARRAY_BASE:
            key = ARRAY_BASE - key
            items = value_text.split(",")
            count = _parse_number(items[0], where)
            if not isinstance(count, int) or count != len(items) - 1:
                raise NcnnFormatError(
                    f"{where}: array param {key} declares {items[0]} values but has {len(items) - 1}"
                )
            value: ParamValue = tuple(_parse_number(v, where) for v in items[1:])
        else:
            value = _parse_number(value_text, where)
        if key in params:
            raise NcnnFormatError(f"{where}: param {key} is given twice")
        params[key] = value
    return params


def parse_param(text: str, source: str = "<param>") -> NcnnGraph:
    """The layers of an ncnn text .param, checked as ncnn's loader checks them (plus: every input
    blob is made by an earlier layer, and the declared counts are the real ones)."""
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines or lines[0][1] != [MAGIC]:
        first = " ".join(lines[0][1])[:40] if lines else "nothing"
        raise NcnnFormatError(
            f"{source} is not an ncnn text .param: the first line must be the magic {MAGIC}, got {first!r}"
        )
    if len(lines) < 2 or len(lines[1][1]) != 2 or not all(t.isdigit() for t in lines[1][1]):
        raise NcnnFormatError(f"{source}: line 2 must be 'layer_count blob_count'")
    layer_count, blob_count = (int(t) for t in lines[1][1])
    body = lines[2:]
    if len(body) != layer_count:
        raise NcnnFormatError(f"{source} declares {layer_count} layers but describes {len(body)}")
    layers: list[NcnnLayer] = []
    made: set[str] = set()
    names: set[str] = set()
    for number, tokens in body:
        where = f"{source} line {number}"
        if len(tokens) < 4 or not tokens[2].isdigit() or not tokens[3].isdigit():
            raise NcnnFormatError(f"{where}: expected 'type name inputs outputs blobs... params...'")
        kind, name = tokens[0], tokens[1]
        n_in, n_out = int(tokens[2]), int(tokens[3])
        blobs = tokens[4 : 4 + n_in + n_out]
        if len(blobs) != n_in + n_out or any("=" in b for b in blobs):
            raise NcnnFormatError(f"{where}: layer {name} declares {n_in} inputs and {n_out} outputs")
        if name in names:
            raise NcnnFormatError(f"{where}: a second layer named {name}")
        names.add(name)
        inputs, outputs = tuple(blobs[:n_in]), tuple(blobs[n_in:])
        for blob in inputs:
            if blob not in made:
                raise NcnnFormatError(f"{where}: layer {name} reads blob {blob}, which no layer before makes")
        for blob in outputs:
            if blob in made:
                raise NcnnFormatError(f"{where}: blob {blob} is made a second time, by layer {name}")
            made.add(blob)
        params = _parse_params(tokens[4 + n_in + n_out :], where)
        layers.append(NcnnLayer(kind, name, inputs, outputs, params, number))
    if len(made) != blob_count:
        raise NcnnFormatError(f"{source} declares {blob_count} blobs but its layers make {len(made)}")
    return NcnnGraph(tuple(layers), blob_count)


def read_param(path: Path) -> NcnnGraph:
    try:
        text = Path(path).read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise NcnnFormatError(
            f"{path} is not an ncnn text .param (binary .param.bin files are not read)"
        ) from None
    return parse_param(text, str(path))


# --- convolutions in the graph ----------------------------------------------------------------


def _activation_after(layer: NcnnLayer, consumers: Mapping[str, list[NcnnLayer]]) -> str:
    fused = layer.int_param(9, 0)
    if fused:
        return FUSED_ACTIVATIONS.get(fused, f"activation_type {fused}")
    readers = consumers.get(layer.outputs[0], [])
    if len(readers) == 1 and readers[0].type in ACTIVATION_LAYERS:
        return ACTIVATION_LAYERS[readers[0].type]
    return "none"


def conv_layer(layer: NcnnLayer, activation: str = "none") -> NcnnConv:
    """A convolution layer's geometry from its params; refuses what has no fixed 2-D geometry or
    what our network cannot hold (int8 quantization, weights fed at run time, a non-zero pad value)."""
    where = f"line {layer.line}: layer {layer.name} ({layer.type})"
    p = layer.int_param
    if len(layer.inputs) != 1 or len(layer.outputs) != 1:
        raise NcnnFormatError(f"{where} has {len(layer.inputs)} inputs and {len(layer.outputs)} outputs")
    if p(19, 0):
        raise NcnnFormatError(f"{where} takes its weights as an input (dynamic_weight), not from the .bin")
    if p(8, 0):
        raise NcnnFormatError(f"{where} is int8-quantized (int8_scale_term); only float weights are imported")
    pad_value = layer.params.get(18, 0)
    if pad_value not in (0, 0.0):
        raise NcnnFormatError(f"{where} pads with {pad_value!r}; a 2-D convolution pads with zeros")
    num_output = p(0, 0)
    kernel_w = p(1, 0)
    kernel_h = p(11, kernel_w)
    dilation_w = p(2, 1)
    dilation_h = p(12, dilation_w)
    stride_w = p(3, 1)
    stride_h = p(13, stride_w)
    pad_left = p(4, 0)
    pad_right = p(15, pad_left)
    pad_top = p(14, pad_left)
    pad_bottom = p(16, pad_top)
    weight_count = p(6, 0)
    groups = p(7, 1) if layer.type == "ConvolutionDepthWise" else 1
    if min(pad_left, pad_right, pad_top, pad_bottom) < 0:
        raise NcnnFormatError(f"{where} pads by input size (SAME mode {pad_left}); no fixed geometry")
    if min(num_output, kernel_w, kernel_h, dilation_w, dilation_h, stride_w, stride_h, groups) < 1:
        raise NcnnFormatError(f"{where} has a zero or negative size, stride, dilation or group")
    per_output = weight_count // num_output
    if per_output * num_output != weight_count or per_output % (kernel_w * kernel_h) or num_output % groups:
        raise NcnnFormatError(
            f"{where}: weight_data_size {weight_count} does not fit {num_output} outputs of "
            f"{kernel_h}x{kernel_w} kernels in {groups} groups"
        )
    geometry = ConvGeometry(
        out_channels=num_output,
        in_per_group=per_output // (kernel_w * kernel_h),
        kernel=(kernel_h, kernel_w),
        stride=(stride_h, stride_w),
        padding=(pad_top, pad_left, pad_bottom, pad_right),
        dilation=(dilation_h, dilation_w),
        groups=groups,
    )
    return NcnnConv(layer, geometry, bool(p(5, 0)), weight_count, activation)


def graph_convs(graph: NcnnGraph) -> list[NcnnConv]:
    """The graph's convolutions in file order, each with the activation applied to its output."""
    consumers: dict[str, list[NcnnLayer]] = {}
    for layer in graph.layers:
        for blob in layer.inputs:
            consumers.setdefault(blob, []).append(layer)
    return [
        conv_layer(layer, _activation_after(layer, consumers))
        for layer in graph.layers
        if layer.type in CONV_TYPES
    ]


# --- .bin -----------------------------------------------------------------------------------


class _Reader:
    """Sequential reads with messages that say which layer ran out of bytes."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = memoryview(data)
        self.offset = 0
        self.source = source

    def take(self, size: int, what: str) -> memoryview:
        end = self.offset + size
        if end > len(self.data):
            raise NcnnFormatError(
                f"{self.source} is truncated: {what} needs bytes {self.offset}..{end} but the file has "
                f"{len(self.data)}"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk


def _aligned(size: int) -> int:
    return (size + 3) // 4 * 4


def _load_tagged(reader: _Reader, count: int, what: str) -> tuple[np.ndarray, str]:
    """ncnn ModelBin::load(count, 0)."""
    head = bytes(reader.take(4, f"{what} (type tag)"))
    tag = int.from_bytes(head, "little")
    if tag == TAG_FP16:
        raw = reader.take(_aligned(2 * count), f"{what} ({count} fp16 values)")
        return np.frombuffer(raw, "<f2", count).astype(np.float32), "fp16"
    if tag == TAG_INT8:
        raw = reader.take(_aligned(count), f"{what} ({count} int8 values)")
        return np.frombuffer(raw, np.int8, count).astype(np.float32), "int8"
    if tag in (TAG_FP32_SCALED, 0):
        raw = reader.take(4 * count, f"{what} ({count} fp32 values)")
        return np.frombuffer(raw, "<f4", count).copy(), "fp32"
    if head[0] == 0:
        # ncnn reads nothing more for such a tag and leaves the weights uninitialised.
        raise NcnnFormatError(f"{reader.source}: {what} has an unknown type tag 0x{tag:08x}")
    table = np.frombuffer(reader.take(256 * 4, f"{what} (quantization table)"), "<f4")
    indices = np.frombuffer(reader.take(_aligned(count), f"{what} ({count} table indices)"), np.uint8, count)
    return table[indices].astype(np.float32), "table"


def _load_raw(reader: _Reader, count: int, what: str) -> np.ndarray:
    """ncnn ModelBin::load(count, 1): untagged fp32."""
    return np.frombuffer(reader.take(4 * count, f"{what} ({count} fp32 values)"), "<f4").copy()


def parse_bin(graph: NcnnGraph, data: bytes, source: str = "<bin>") -> dict[str, LayerWeights]:
    """Each convolution layer's weights (by layer name) from the .bin bytes of `graph`. The file
    must end where the last layer's weights end: leftover bytes mean it belongs to another .param."""
    reader = _Reader(data, source)
    weights: dict[str, LayerWeights] = {}
    for layer in graph.layers:
        if layer.type in WEIGHTLESS_TYPES:
            continue
        if layer.type not in CONV_TYPES:
            raise NcnnFormatError(
                f"{source}: layer {layer.name} is a {layer.type}, whose weights this reader cannot lay out"
            )
        conv = conv_layer(layer)
        weight, encoding = _load_tagged(reader, conv.weight_count, f"layer {layer.name} weight_data")
        bias = (
            _load_raw(reader, conv.geometry.out_channels, f"layer {layer.name} bias_data")
            if conv.has_bias
            else None
        )
        for name, values in (("weight_data", weight), ("bias_data", bias)):
            if values is not None and not np.isfinite(values).all():
                raise NcnnFormatError(f"{source}: layer {layer.name} {name} holds NaN or infinity")
        weights[layer.name] = LayerWeights(weight, bias, encoding)
    if reader.offset != len(data):
        raise NcnnFormatError(
            f"{source} has {len(data) - reader.offset} bytes after the last layer's weights "
            f"(ends at {reader.offset} of {len(data)}): not the .bin of this .param"
        )
    return weights


def read_bin(graph: NcnnGraph, path: Path) -> dict[str, LayerWeights]:
    return parse_bin(graph, Path(path).read_bytes(), str(path))


# --- onto our model -------------------------------------------------------------------------


def our_activations(model: YoloFace) -> dict[str, str]:
    """Our conv name -> the activation applied to its output (head convs have none)."""
    acts: dict[str, str] = {}
    for unit_name, unit in model.conv_units():
        acts[f"{unit_name}.conv"] = "silu" if isinstance(unit.act, nn.SiLU) else "none"
    return acts


def first_ncnn_mismatch(model: YoloFace, convs: list[NcnnConv]) -> str | None:
    """None when every ncnn convolution fits the model's in the same position (geometry and the
    activation after it), else a message naming the first that does not."""
    ours = convs_in_forward_order(model)
    acts = our_activations(model)
    for position, ((name, conv), theirs) in enumerate(zip(ours, convs, strict=False)):
        mine = geometry_of(conv)
        act = acts.get(name, "none")
        if (mine, act) != (theirs.geometry, theirs.activation):
            return (
                f"layer {name} (conv #{position}: {mine.describe()}, then {act}) does not match ncnn layer "
                f"{theirs.layer.name} on line {theirs.layer.line} ({theirs.geometry.describe()}, then "
                f"{theirs.activation})"
            )
    return count_mismatch(model, ours, [c.layer.name for c in convs], "ncnn layer", "the ncnn graph")


def _meta_model(config: ModelConfig) -> YoloFace:
    with torch.device("meta"):
        return YoloFace(config).fuse_layout()


def recognise_config(convs: list[NcnnConv], candidates: Iterable[ModelConfig]) -> ModelConfig:
    """The first candidate config whose fused convolutions match the graph's."""
    problems: list[str] = []
    for config in candidates:
        problem = first_ncnn_mismatch(_meta_model(config), convs)
        if problem is None:
            return config
        problems.append(f"  {config.name}: {problem}")
    raise WeightImportError(
        "the ncnn graph matches none of the known YOLOv5-Face configs:\n" + "\n".join(problems)
    )


def candidate_configs(preferred: str = PREFERRED_CONFIG) -> list[ModelConfig]:
    """The built-in configs, `preferred` first."""
    return sorted(CONFIGS.values(), key=lambda c: c.name != preferred)


def onnx_style_convs(convs: list[NcnnConv], weights: Mapping[str, LayerWeights]) -> list[OnnxConv]:
    """The convolutions with their weights as onnx_weights' records (OIHW float32), refusing
    weights that are not floats."""
    records: list[OnnxConv] = []
    for conv in convs:
        stored = weights[conv.layer.name]
        if stored.encoding == "int8":
            raise WeightImportError(
                f"ncnn layer {conv.layer.name} stores int8-quantized weights; only float weights are imported"
            )
        g = conv.geometry
        shape = (g.out_channels, g.in_per_group, g.kernel[0], g.kernel[1])
        records.append(
            OnnxConv(
                conv.layer.name,
                f"{conv.layer.name}.weight_data",
                g,
                stored.weight.reshape(shape),
                stored.bias,
            )
        )
    return records


def bin_path_for(param_path: Path) -> Path:
    """ncnn's convention: the weights sit beside the graph, `x.param` -> `x.bin`."""
    return Path(param_path).with_suffix(".bin")


def import_ncnn(
    param_path: Path, bin_path: Path | None = None, config: ModelConfig | None = None
) -> YoloFace:
    """Our fused float32 model carrying the weights of an ncnn model. Without `config`, the config
    is recognised from the graph's convolutions, yolov5n-face first."""
    param_path = Path(param_path)
    bin_path = Path(bin_path) if bin_path is not None else bin_path_for(param_path)
    if not bin_path.is_file():
        raise FileNotFoundError(f"ncnn weights {bin_path} (beside {param_path.name}) do not exist")
    graph = read_param(param_path)
    convs = graph_convs(graph)
    if not convs:
        raise WeightImportError(f"{param_path} has no convolution layers; is it a YOLOv5-Face graph?")
    weights = read_bin(graph, bin_path)
    if config is None:
        config = recognise_config(convs, candidate_configs())
    else:
        problem = first_ncnn_mismatch(_meta_model(config), convs)
        if problem is not None:
            raise WeightImportError(problem)
    with torch.device("meta"):
        model = YoloFace(config).fuse_layout()
    model.to_empty(device="cpu")
    load_onnx_convs(model, onnx_style_convs(convs, weights))
    return model.eval()
