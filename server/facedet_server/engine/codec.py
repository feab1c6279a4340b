"""The pipeline's dataclasses to and from the `protocol` Structs: what goes on the engine socket.

Encoding collects the large data (JPEG bytes, C-contiguous arrays) into an `OutOfBand` list,
referenced from the Structs by index, without copying it. Decoding turns a received `wire.Frame`
back into the same dataclasses, with arrays and JPEG bytes as views of the frame's one receive
buffer; a reference that does not fit the frame (an index past its buffers, a size that does
not match the shape) is a `MalformedFrame`. Only the dataclasses named here are ever built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from facedet_server import errors
from facedet_server.engine.protocol import (
    ArrayRef,
    BatchDone,
    DetectionWire,
    DType,
    EngineInfo,
    ErrorKind,
    ErrorWire,
    GpuPreparedWire,
    GpuPreparerWire,
    HostPreparerWire,
    LetterboxWire,
    LimitsWire,
    OptionsWire,
    PreparedWire,
    RunBatch,
    SpecWire,
    TimingWire,
)
from facedet_server.engine.wire import MalformedFrame
from facedet_server.errors import Code, DetectError
from facedet_server.faces.options import Options
from facedet_server.model.spec import ModelSpec
from facedet_server.pipeline.base import Detection, Limits, Prepared, Timing
from facedet_server.pipeline.gpu_prepare import GpuPrepared, GpuPreparer
from facedet_server.pipeline.host import HostPreparer
from facedet_server.tensor.letterbox import Letterbox

_ERROR_KINDS: dict[ErrorKind, type[DetectError]] = {
    "DetectError": DetectError,
    "InvalidImage": errors.InvalidImage,
    "InvalidOptions": errors.InvalidOptions,
    "Overloaded": errors.Overloaded,
    "Unavailable": errors.Unavailable,
}
_KIND_OF: dict[type, ErrorKind] = {cls: kind for kind, cls in _ERROR_KINDS.items()}


class OutOfBand:
    """The buffers of one outgoing frame, in the order the Structs index them."""

    def __init__(self) -> None:
        self.views: list[memoryview] = []

    def add_bytes(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        self.views.append(view if view.format == "B" and view.ndim == 1 else view.cast("B"))
        return len(self.views) - 1

    def add_array(self, array: np.ndarray) -> ArrayRef:
        dtype = _wire_dtype(array)
        # A copy only if strided; .data of the flat uint8 view is a 1-D memoryview of format "B".
        self.views.append(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        return ArrayRef(len(self.views) - 1, dtype, array.shape)


def _wire_dtype(array: np.ndarray) -> DType:
    if array.dtype == np.uint8:
        return "uint8"
    if array.dtype == np.float32:
        return "float32"
    raise TypeError(f"no wire form for {array.dtype} arrays (uint8 and float32 only)")


def _buffer(buffers: Sequence[memoryview], index: int) -> memoryview:
    if index >= len(buffers):
        raise MalformedFrame(f"malformed frame: buffer {index} of a frame with {len(buffers)}")
    return buffers[index]


def _array(ref: ArrayRef, buffers: Sequence[memoryview]) -> np.ndarray:
    view = _buffer(buffers, ref.buffer)
    dtype = np.dtype(ref.dtype)
    if math.prod(ref.shape) * dtype.itemsize != view.nbytes:
        raise MalformedFrame(
            f"malformed frame: a {ref.dtype} array of shape {ref.shape} in a buffer of {view.nbytes} bytes"
        )
    try:
        return np.frombuffer(view, dtype).reshape(ref.shape)
    except ValueError as exc:  # a size-0 array with an absurd shape
        raise MalformedFrame(f"malformed frame: array of shape {ref.shape}: {exc}") from None


# --- small values -----------------------------------------------------------------------------


def _timing_wire(t: Timing) -> TimingWire:
    return TimingWire(t.decode_us, t.queue_us, t.inference_us, t.postprocess_us, t.total_us, t.batch_size)


def _timing(w: TimingWire) -> Timing:
    return Timing(w.decode_us, w.queue_us, w.inference_us, w.postprocess_us, w.total_us, w.batch_size)


def _options_wire(o: Options) -> OptionsWire:
    return OptionsWire(o.min_confidence, o.iou_threshold, o.max_faces, o.min_face_size, o.exif_orientation)


def _options(w: OptionsWire) -> Options:
    return Options(w.min_confidence, w.iou_threshold, w.max_faces, w.min_face_size, w.exif_orientation)


def spec_wire(spec: ModelSpec) -> SpecWire:
    return SpecWire(**asdict(spec))


def model_spec(w: SpecWire) -> ModelSpec:
    try:
        return ModelSpec(**_fields(w))
    except ValueError as exc:  # its own checks (as many anchor sets as strides)
        raise MalformedFrame(f"malformed frame: model spec: {exc}") from None


def limits_wire(limits: Limits) -> LimitsWire:
    return LimitsWire(limits.max_pixels, limits.max_faces)


def limits_of(w: LimitsWire) -> Limits:
    return Limits(w.max_pixels, w.max_faces)


def _fields(struct: Any) -> dict[str, Any]:
    return {name: getattr(struct, name) for name in struct.__struct_fields__}


# --- the engine's description -----------------------------------------------------------------


def preparer_wire(preparer: object) -> HostPreparerWire | GpuPreparerWire:
    """The engine's preparer as data; the front end builds an equal one with `preparer_of`."""
    if isinstance(preparer, HostPreparer):
        return HostPreparerWire(spec_wire(preparer.spec), limits_wire(preparer.limits), preparer.input_size)
    if isinstance(preparer, GpuPreparer):
        return GpuPreparerWire(
            spec_wire(preparer.spec),
            limits_wire(preparer.limits),
            preparer.input_size,
            preparer.gpu_decode,
            preparer.rectangular,
        )
    raise TypeError(f"no wire form for a {type(preparer).__name__} (HostPreparer and GpuPreparer only)")


def preparer_of(w: HostPreparerWire | GpuPreparerWire) -> HostPreparer | GpuPreparer:
    if isinstance(w, HostPreparerWire):
        return HostPreparer(model_spec(w.spec), limits_of(w.limits), w.input_size)
    return GpuPreparer(model_spec(w.spec), limits_of(w.limits), w.input_size, w.gpu_decode, w.rectangular)


def engine_info(
    preparer: object,
    spec: ModelSpec,
    limits: Limits,
    *,
    backend: str,
    device: str,
    model_sha256: str,
    max_batch: int,
    pid: int,
) -> EngineInfo:
    return EngineInfo(
        preparer_wire(preparer),
        spec_wire(spec),
        limits_wire(limits),
        backend,
        device,
        model_sha256,
        max_batch,
        pid,
    )


# --- batches ----------------------------------------------------------------------------------


def run_batch(items: Sequence[Prepared | GpuPrepared]) -> tuple[RunBatch, list[memoryview]]:
    out = OutOfBand()
    return RunBatch([_item_wire(item, out) for item in items]), out.views


def _item_wire(item: Prepared | GpuPrepared, out: OutOfBand) -> PreparedWire | GpuPreparedWire:
    if isinstance(item, Prepared):
        t = item.transform
        return PreparedWire(
            out.add_array(item.canvas),
            LetterboxWire(t.gain_x, t.gain_y, t.offset_x, t.offset_y),
            item.width,
            item.height,
            _options_wire(item.options),
            _timing_wire(item.timing),
        )
    if isinstance(item, GpuPrepared):
        return GpuPreparedWire(
            _options_wire(item.options),
            item.width,
            item.height,
            None if item.jpeg is None else out.add_bytes(item.jpeg),
            None if item.pixels is None else out.add_array(item.pixels),
            item.scale,
            item.orientation,
            _timing_wire(item.timing),
        )
    raise TypeError(f"no wire form for a batch item of type {type(item).__name__}")


def batch_items(message: RunBatch, buffers: Sequence[memoryview]) -> list[Prepared | GpuPrepared]:
    """The items as the engine's pipeline takes them; arrays and JPEGs are views of `buffers`."""
    items: list[Prepared | GpuPrepared] = []
    for w in message.items:
        if isinstance(w, PreparedWire):
            t = w.transform
            transform = Letterbox(t.gain_x, t.gain_y, t.offset_x, t.offset_y)
            canvas = _array(w.canvas, buffers)
            items.append(
                Prepared(canvas, transform, w.width, w.height, _options(w.options), _timing(w.timing))
            )
        else:
            items.append(
                GpuPrepared(
                    _options(w.options),
                    w.width,
                    w.height,
                    jpeg=None if w.jpeg is None else _buffer(buffers, w.jpeg),
                    pixels=None if w.pixels is None else _array(w.pixels, buffers),
                    scale=w.scale,
                    orientation=w.orientation,
                    timing=_timing(w.timing),
                )
            )
    return items


def batch_done(results: Sequence[Detection | DetectError]) -> tuple[BatchDone, list[memoryview]]:
    out = OutOfBand()
    wires: list[DetectionWire | ErrorWire] = []
    for result in results:
        if isinstance(result, DetectError):
            wires.append(ErrorWire(_error_kind(result), result.code.value, result.message))
        else:
            faces = out.add_array(result.faces)
            wires.append(DetectionWire(faces, result.width, result.height, _timing_wire(result.timing)))
    return BatchDone(wires), out.views


def batch_results(message: BatchDone, buffers: Sequence[memoryview]) -> list[Detection | DetectError]:
    results: list[Detection | DetectError] = []
    for w in message.results:
        if isinstance(w, ErrorWire):
            results.append(_error(w))
        else:
            results.append(Detection(_array(w.faces, buffers), w.width, w.height, _timing(w.timing)))
    return results


def _error_kind(error: DetectError) -> ErrorKind:
    """The nearest class the wire knows (an error class of the engine's own, say, is sent as
    its base); its code travels apart, so the status the caller gets is the same."""
    return next(_KIND_OF[cls] for cls in type(error).__mro__ if cls in _KIND_OF)


def _error(w: ErrorWire) -> DetectError:
    error = _ERROR_KINDS[w.kind](w.message)
    code = Code(w.code)
    if error.code is not code:
        error.code = code
    return error
