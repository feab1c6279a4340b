"""ONNX export of our model: dynamic batch, height and width, decoding inside the graph, and the
model's description in `metadata_props` (facedet_server.model.spec.ModelSpec).

The graph takes `images` (N, 3, H, W) float32, RGB scaled to 0..1 and letterboxed with gray 114,
H and W multiples of the largest stride (32; 64 for the P6 models), and gives `candidates`
(N, K, 15) float32 rows [cx, cy, w, h, score, lx0, ly0, ..., lx4, ly4] in input pixels, before
any confidence threshold or NMS. K = anchors * sum over levels of (H/stride * W/stride).

Export goes through torch.export (the TorchScript exporter is deprecated and bakes traced sizes
into the decoding grid). Dimensions are declared as multiples of the stride so the exporter can
prove every concat and grid lines up for all sizes, not just the example.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from facedet_nn.model import DecodedYoloFace, YoloFace
from facedet_server.model.files import sha256_of
from facedet_server.model.network import (
    INPUT_NAME,
    MAX_SIDE,
    OUTPUT_LAYOUT,
    OUTPUT_NAME,
    describe_source,
    network_spec,
    size_multiple,
)
from facedet_server.model.onnx_metadata import read_spec
from facedet_server.model.spec import ModelSpec
from torch import nn

from facedet_converter import __version__

__all__ = ["check_onnx", "export_from_upstream_onnx", "export_onnx", "model_spec", "read_spec"]

# torch's exporter writes opset 18 natively. Asking it for 17 runs ONNX's version converter,
# which leaves opset-18 attributes (Split's num_outputs) behind and fails the checker, so 18 is
# the floor. TensorRT 10+ and ONNX Runtime >= 1.14 read opset 18.
DEFAULT_OPSET = 18
MIN_OPSET = 18
MAX_BATCH = 1024


class ExportCheckError(RuntimeError):
    """The exported file does not reproduce the PyTorch model."""


def model_spec(
    model: YoloFace,
    *,
    source: str,
    source_sha256: str,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
) -> ModelSpec:
    """What the server needs to know about the exported file; travels in its metadata."""
    return network_spec(
        model,
        source=source,
        source_sha256=source_sha256,
        extra={
            "converter": f"facedet_converter {__version__}",
            "torch": torch.__version__.split("+")[0],
            "onnx_opset": str(opset),
            "precision": precision,
        },
    )


class _HalfPrecision(nn.Module):
    """float32 in and out, float16 inside: the network runs in half precision, the decoding in
    float32. TensorRT 11 builds FP16 engines only from such strongly typed graphs."""

    def __init__(self, decoded: DecodedYoloFace) -> None:
        super().__init__()
        self.decoded = decoded

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoded.decoder(self.decoded.model(images.half()))  # type: ignore[no-any-return]


def export_onnx(
    model: YoloFace,
    dst: Path,
    spec: ModelSpec,
    *,
    half: bool = False,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write `model` (fused or not; the export fuses a copy) to `dst` with dynamic batch and
    size and `spec` in its metadata. Atomic: `dst` is either the old file or the complete new one."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old; the export needs opset >= {MIN_OPSET}")
    if spec.output_names != (OUTPUT_NAME,) or spec.input_name != INPUT_NAME or spec.output_kind != "decoded":
        raise ValueError("the spec must describe the decoded export (see model_spec)")
    module: nn.Module = DecodedYoloFace(_fused_copy(model)).eval()
    if half:
        module = _HalfPrecision(module.half())  # type: ignore[arg-type]
        # Anchors stay exact in float16, but keep the decoder's own buffers in float32 anyway.
        module.decoded.decoder.float()
    multiple = size_multiple(model)
    example = torch.rand(2, 3, 5 * multiple, 4 * multiple)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    rows = torch.export.Dim("rows", min=1, max=MAX_SIDE // multiple)
    cols = torch.export.Dim("cols", min=1, max=MAX_SIDE // multiple)
    shapes = {"images": {0: batch, 2: multiple * rows, 3: multiple * cols}}
    with torch.no_grad(), _quiet_exporter():
        program = torch.export.export(module, (example,), dynamic_shapes=shapes)
        onnx_program = torch.onnx.export(
            program,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            optimize=True,
            verbose=False,
        )
    assert onnx_program is not None
    proto = onnx_program.model_proto
    _name_dims(proto)
    for key, value in spec.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"YOLOv5-Face {spec.name} exported by facedet_converter {__version__} from {spec.source} "
        f"(sha256 {spec.source_sha256}). {OUTPUT_LAYOUT}."
    )
    onnx.checker.check_model(proto, full_check=True)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def _fused_copy(model: YoloFace) -> YoloFace:
    """A fused float32 copy in eval mode; the caller's model is left as it was."""
    return copy.deepcopy(model).fuse().float().eval()


def _name_dims(proto: object) -> None:
    """Readable names for the dynamic axes instead of the exporter's symbolic expressions."""
    graph = proto.graph  # type: ignore[attr-defined]
    for value, names in (
        (graph.input[0], ("batch", None, "height", "width")),
        (graph.output[0], ("batch", "candidates", None)),
    ):
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=True):
            if name is not None:
                dim.dim_param = name


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's exporter logs progress and warns about optional operators (torchvision's) that mean
    nothing here; keep the CLI's output to what we print."""
    names = (
        "torch.onnx",
        "torch.export",
        "torch._export",
        "onnxscript",
        "torch.fx.experimental.symbolic_shapes",
    )
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@dataclass(frozen=True)
class CheckResult:
    shape: tuple[int, int, int, int]
    max_abs_diff: float


def default_check_shapes(multiple: int) -> tuple[tuple[int, int, int, int], ...]:
    """A square, a 16:9-ish rectangle, and a small odd one, at batch sizes 1 to 3."""
    return ((1, 3, 640, 640), (2, 3, 384, 640), (3, 3, 5 * multiple, 3 * multiple))


def check_onnx(
    path: Path,
    model: YoloFace,
    shapes: Sequence[tuple[int, int, int, int]] | None = None,
    *,
    head_tolerance: float = 1e-4,
    seed: int = 0,
) -> list[CheckResult]:
    """Run the exported file in ONNX Runtime and the PyTorch model on the same random inputs;
    raise ExportCheckError unless they agree as raw heads agreeing to `head_tolerance` would.

    Decoding multiplies raw values by anchors of up to ~570 pixels, so coordinates may differ by
    up to head_tolerance * largest anchor (0.04 px for the P5 models); scores take a sigmoid and
    may differ by head_tolerance. Both sides also round their own float32 arithmetic, hence the
    small relative term for large coordinates."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = DecodedYoloFace(_fused_copy(model)).eval()
    largest_anchor = max(max(pair) for level in model.anchors for pair in level)
    pixel_tolerance = head_tolerance * largest_anchor
    generator = torch.Generator().manual_seed(seed)
    results: list[CheckResult] = []
    for shape in shapes or default_check_shapes(size_multiple(model)):
        images = torch.rand(shape, generator=generator)
        with torch.no_grad():
            expected = reference(images).numpy()
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        if actual.shape != expected.shape:
            raise ExportCheckError(
                f"{path.name} at input {shape}: output {actual.shape}, PyTorch {expected.shape}"
            )
        diff = np.abs(actual - expected)
        allowed = np.full(expected.shape[-1], pixel_tolerance, np.float32)
        allowed[4] = head_tolerance  # the score column
        allowed = allowed + 1e-6 * np.abs(expected)
        if diff.size and not np.all(diff <= allowed):
            column = int(np.argmax((diff - allowed).max(axis=tuple(range(diff.ndim - 1)))))
            raise ExportCheckError(
                f"{path.name} at input {shape}: ONNX Runtime and PyTorch differ by up to "
                f"{float(diff[..., column].max()):.3g} in column {column} of the candidates"
            )
        results.append(CheckResult(shape, float(diff.max()) if diff.size else 0.0))
    return results


def export_from_upstream_onnx(src: Path, dst: Path, *, check: bool = True) -> Path:
    """Import the weights of an upstream ONNX export (e.g. the pulled yolov5n-0.5.onnx) into our
    model and export our dynamic-shape ONNX to `dst`, checked against PyTorch in ONNX Runtime."""
    from facedet_nn.onnx_weights import import_onnx

    src, dst = Path(src), Path(dst)
    model = import_onnx(src)
    export_onnx(model, dst, spec_for_weights(model, src))
    if check:
        check_onnx(dst, model, ((1, 3, 640, 640), (2, 3, 384, 640)))
    return dst


def spec_for_weights(
    model: YoloFace, weights: Path, *, precision: str = "fp32", opset: int = DEFAULT_OPSET
) -> ModelSpec:
    """model_spec naming `weights` (the file the user converted) as the source. An ncnn model is
    two files: the source names both, and the hash is the weights' (.bin)."""
    from facedet_nn.loading import is_ncnn_param
    from facedet_nn.ncnn_weights import bin_path_for

    weights = Path(weights)
    if is_ncnn_param(weights):
        bin_path = bin_path_for(weights)
        sha = sha256_of(bin_path)
        source = f"{weights.name} + {bin_path.name}"
    else:
        sha = sha256_of(weights)
        source = describe_source(weights, sha)
    return model_spec(model, source=source, source_sha256=sha, precision=precision, opset=opset)
