"""The detection pipeline, stage by stage: bytes -> image -> tensor -> raw output -> faces.

`Detector` owns a backend and the limits, and exposes the three stages the server schedules
separately (`prepare` on a decode thread pool, `infer_batch` on the inference thread, results
back to the caller) plus `detect`, which runs them in a row for tests and in-process benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from facedet_server.errors import DetectError
from facedet_server.faces.heads import decode_heads
from facedet_server.faces.options import Options
from facedet_server.faces.select import select_faces
from facedet_server.image.decode import DecodedImage, decode_encoded, decode_raw
from facedet_server.model.spec import ModelSpec
from facedet_server.runtime.base import Backend
from facedet_server.tensor.letterbox import Letterbox, input_shape_for, letterbox, to_tensor


@dataclass(frozen=True)
class EncodedImage:
    data: bytes


@dataclass(frozen=True)
class RawFrame:
    width: int
    height: int
    pixel_format: str  # "RGB8", "BGR8", "GRAY8"
    data: bytes


ImageInput = EncodedImage | RawFrame


@dataclass
class Timing:
    """Microseconds per stage for one image (see the Timing message in the .proto)."""

    decode_us: int = 0
    queue_us: int = 0
    inference_us: int = 0
    postprocess_us: int = 0
    total_us: int = 0
    batch_size: int = 0


@dataclass
class Prepared:
    """An image letterboxed to the network input, with the map back to the client's pixels."""

    canvas: np.ndarray  # (h, w, 3) uint8
    transform: Letterbox
    width: int
    height: int
    options: Options
    timing: Timing = field(default_factory=Timing)


@dataclass(frozen=True)
class Detection:
    faces: np.ndarray  # (M, 15) float32: box corners, score, 5 landmarks (x, y), client pixels
    width: int
    height: int
    timing: Timing


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 50_000_000
    max_faces: int = 1000


def micros_since(start: float) -> int:
    """Microseconds since a time.perf_counter() reading (the unit of every Timing field)."""
    return int((time.perf_counter() - start) * 1e6)


def decode_image(image: ImageInput, max_pixels: int, target: tuple[int, int] | None) -> DecodedImage:
    """Either kind of input -> RGB pixels; `target` (w, h) allows a DCT-reduced JPEG decode."""
    if isinstance(image, EncodedImage):
        return decode_encoded(image.data, max_pixels, target=target)
    return decode_raw(image.width, image.height, image.pixel_format, image.data, max_pixels)


class Preparer(Protocol):
    """The request-side half of a pipeline: checks and decodes one image on the CPU. It needs
    no model runtime, so a front-end process without the model (see `facedet_server.engine`)
    runs the same code as the process that has it."""

    @property
    def input_shape(self) -> tuple[int, int]: ...

    def prepare(self, image: ImageInput, options: Options) -> Any: ...

    def prepare_inline(self, image: ImageInput, options: Options) -> Any | None: ...


class BackendInfo(Protocol):
    """What the service reports about the model runtime (GetModelInfo) and closes at exit."""

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def name(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def max_batch(self) -> int: ...

    @property
    def model_sha256(self) -> str: ...

    def close(self) -> None: ...


class Pipeline(Protocol):
    """What the service schedules: `prepare` on the decode pool (or `prepare_inline` on the
    event loop, when it says the work is only a header check), `infer_batch` on an inference
    thread. `Detector` (host pre/post-processing, any backend), `GpuDetector` and
    `EnginePipeline` (the model in another process) implement it."""

    @property
    def backend(self) -> BackendInfo: ...

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def preparer(self) -> Preparer: ...

    @property
    def input_shape(self) -> tuple[int, int]: ...

    def prepare(self, image: ImageInput, options: Options) -> Any: ...

    def prepare_inline(self, image: ImageInput, options: Options) -> Any | None: ...

    def infer_batch(self, items: Sequence[Any]) -> Sequence[Detection | DetectError]: ...

    def detect(self, image: ImageInput, options: Options | None = None) -> Detection: ...

    def warm_up(self) -> None: ...


@dataclass(frozen=True)
class HostPreparer:
    """Decode and letterbox on the CPU, for backends that take a host float32 batch."""

    spec: ModelSpec
    limits: Limits
    input_size: int = 640

    @property
    def fixed_shape(self) -> tuple[int, int] | None:
        spec = self.spec
        return None if spec.dynamic_shape else (spec.input_width or 0, spec.input_height or 0)

    @property
    def input_shape(self) -> tuple[int, int]:
        """The largest network input (width, height) this pipeline feeds the model."""
        return self.fixed_shape or (self.input_size, self.input_size)

    def prepare(self, image: ImageInput, options: Options) -> Prepared:
        """Decode and letterbox; CPU work that releases the GIL, run on the decode pool."""
        start = time.perf_counter()
        decoded = decode_image(image, self.limits.max_pixels, self.input_shape)
        target_w, target_h = input_shape_for(
            decoded.width, decoded.height, self.fixed_shape, self.input_size, self.spec.size_multiple
        )
        canvas, transform = letterbox(
            decoded.pixels, target_w, target_h, self.spec.pad_value, (decoded.scale_x, decoded.scale_y)
        )
        prepared = Prepared(canvas, transform, decoded.width, decoded.height, options)
        prepared.timing.decode_us = micros_since(start)
        return prepared

    def prepare_inline(self, image: ImageInput, options: Options) -> None:
        """Every image needs a CPU decode here: always the decode pool."""
        return None


class Detector:
    def __init__(self, backend: Backend, limits: Limits | None = None, input_size: int = 640) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.limits = limits or Limits()
        self.preparer = HostPreparer(self.spec, self.limits, input_size)

    @property
    def fixed_shape(self) -> tuple[int, int] | None:
        return self.preparer.fixed_shape

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.preparer.input_shape

    def prepare(self, image: ImageInput, options: Options) -> Prepared:
        return self.preparer.prepare(image, options)

    def prepare_inline(self, image: ImageInput, options: Options) -> None:
        return self.preparer.prepare_inline(image, options)

    def infer_batch(self, items: Sequence[Prepared]) -> list[Detection | DetectError]:
        """Run the model on images of any shapes: images of one input shape share a model call."""
        results: dict[int, Detection | DetectError] = {}
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(items):
            by_shape.setdefault(item.canvas.shape, []).append(index)
        for indices in by_shape.values():
            for first in range(0, len(indices), self.backend.max_batch):
                chunk = indices[first : first + self.backend.max_batch]
                for index, detection in zip(chunk, self._run_chunk([items[i] for i in chunk]), strict=True):
                    results[index] = detection
        return [results[i] for i in range(len(items))]

    def _run_chunk(self, items: list[Prepared]) -> list[Detection]:
        start = time.perf_counter()
        h, w = items[0].canvas.shape[:2]
        batch = np.empty((len(items), 3, h, w), np.float32)
        for slot, item in zip(batch, items, strict=True):
            to_tensor(item.canvas, slot, self.spec.scale)
        candidates = decode_heads(self.backend.run(batch), self.spec)
        inference_us = micros_since(start)
        detections = []
        for item, cands in zip(items, candidates, strict=True):
            post_start = time.perf_counter()
            faces = select_faces(cands, item.options, item.transform, item.width, item.height)
            timing = item.timing
            timing.inference_us = inference_us
            timing.postprocess_us = micros_since(post_start)
            timing.batch_size = len(items)
            detections.append(Detection(faces, item.width, item.height, timing))
        return detections

    def detect(self, image: ImageInput, options: Options | None = None) -> Detection:
        """All stages in a row on the calling thread."""
        start = time.perf_counter()
        (detection,) = self.infer_batch([self.prepare(image, options or Options())])
        if isinstance(detection, DetectError):
            raise detection
        detection.timing.total_us = micros_since(start)
        return detection

    def warm_up(self) -> None:
        """One run at every input shape the server uses first, so the first client pays nothing."""
        w, h = self.input_shape
        frame = RawFrame(w, h, "RGB8", np.full((h, w, 3), 114, np.uint8).tobytes())
        self.detect(frame)
