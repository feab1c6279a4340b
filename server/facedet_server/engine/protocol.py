"""The messages front ends and the engine exchange, as msgspec Structs: the whole schema of the
socket (framed by `wire`, converted from and to the pipeline's dataclasses by `codec`).

A front end opens one connection per inference thread and keeps one request in flight on it:
`Hello` -> `EngineInfo` once, then `RunBatch` -> `BatchDone` or `BatchFailed`, in order.

Large data (JPEG bytes, pixel and face arrays) is not in these Structs: they name it by its index
among the frame's out-of-band buffers (`ArrayRef`, `GpuPreparedWire.jpeg`), so it is never
copied into or out of the encoded body. Every Struct is `array_like` (fields by position: the
body stays small) and every union is tagged, so a typed decode yields exactly one declared type.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

# An index or a size: a negative one is a malformed frame, refused by the typed decode.
Count = Annotated[int, msgspec.Meta(ge=0)]
# The dtypes the pipeline sends: pixels and canvases are uint8, faces float32. A closed list, so
# a frame cannot ask for object arrays (pointers read from the socket).
DType = Literal["uint8", "float32"]
ErrorCode = Literal["INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL"]
ErrorKind = Literal["DetectError", "InvalidImage", "InvalidOptions", "Overloaded", "Unavailable"]


class _Wire(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """The options of every Struct here (`frozen` repeated on each: mypy does not inherit it)."""


class ArrayRef(_Wire, frozen=True):
    """A C-contiguous ndarray whose bytes are out-of-band buffer `buffer` of the frame."""

    buffer: Count
    dtype: DType
    shape: Annotated[tuple[Count, ...], msgspec.Meta(max_length=4)]


class TimingWire(_Wire, frozen=True):
    decode_us: int
    queue_us: int
    inference_us: int
    postprocess_us: int
    total_us: int
    batch_size: int


class OptionsWire(_Wire, frozen=True):
    min_confidence: float
    iou_threshold: float
    max_faces: int
    min_face_size: float
    exif_orientation: bool


class LetterboxWire(_Wire, frozen=True):
    gain_x: float
    gain_y: float
    offset_x: float
    offset_y: float


class LimitsWire(_Wire, frozen=True):
    max_pixels: int
    max_faces: int


class SpecWire(_Wire, frozen=True):
    """Every field of `ModelSpec`, in its order (a test checks they stay the same)."""

    name: str
    strides: tuple[int, ...]
    anchors: tuple[tuple[tuple[float, float], ...], ...]
    input_name: str
    output_names: tuple[str, ...]
    output_kind: Literal["raw_heads", "decoded"]
    num_landmarks: int
    input_height: int | None
    input_width: int | None
    batch_size: int | None
    size_multiple: int
    color_order: str
    scale: float
    pad_value: int
    source: str
    source_sha256: str
    extra: dict[str, str]


# --- the engine's preparer, as data: the front end builds the same one from it ------------------


class HostPreparerWire(_Wire, frozen=True, tag="host"):
    spec: SpecWire
    limits: LimitsWire
    input_size: int


class GpuPreparerWire(_Wire, frozen=True, tag="gpu"):
    spec: SpecWire
    limits: LimitsWire
    input_size: int
    gpu_decode: bool
    rectangular: bool


# --- batch items (what a preparer made) and results -------------------------------------------


class PreparedWire(_Wire, frozen=True, tag="host"):
    canvas: ArrayRef
    transform: LetterboxWire
    width: int
    height: int
    options: OptionsWire
    timing: TimingWire


class GpuPreparedWire(_Wire, frozen=True, tag="gpu"):
    options: OptionsWire
    width: int
    height: int
    jpeg: Count | None  # the buffer holding the compressed bytes
    pixels: ArrayRef | None
    scale: tuple[float, float]
    orientation: int
    timing: TimingWire


class DetectionWire(_Wire, frozen=True, tag="detection"):
    faces: ArrayRef
    width: int
    height: int
    timing: TimingWire


class ErrorWire(_Wire, frozen=True, tag="error"):
    """A `DetectError` for one image: its class (the nearest one of `errors`) and gRPC code."""

    kind: ErrorKind
    code: ErrorCode
    message: str


# --- the messages -----------------------------------------------------------------------------


class Hello(_Wire, frozen=True, tag=True):
    pass


class EngineInfo(_Wire, frozen=True, tag=True):
    """What a front end needs to check requests and describe the model, without loading it."""

    preparer: HostPreparerWire | GpuPreparerWire
    spec: SpecWire
    limits: LimitsWire
    backend: str
    device: str
    model_sha256: str
    max_batch: int
    pid: int


class RunBatch(_Wire, frozen=True, tag=True):
    items: list[PreparedWire | GpuPreparedWire]


class BatchDone(_Wire, frozen=True, tag=True):
    results: list[DetectionWire | ErrorWire]


class BatchFailed(_Wire, frozen=True, tag=True):
    """The whole batch failed in the engine (a runtime error, not a bad image)."""

    message: str


Message = Hello | EngineInfo | RunBatch | BatchDone | BatchFailed
