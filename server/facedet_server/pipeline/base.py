"""What every pipeline shares: the per-image data types, the protocols the service schedules,
and the batching and warm-up logic that does not depend on where the model runs.

A pipeline is generic over its prepared item `P`: what its `Preparer` makes on the CPU side of a
request and its `infer_batch` takes back (`Prepared` on the host path, `GpuPrepared` on the GPU
path). The service and batcher only carry items from one to the other.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from facedet_server.errors import DetectError
from facedet_server.faces.options import Options
from facedet_server.image.inputs import ImageInput, gray_frame
from facedet_server.model.spec import ModelSpec
from facedet_server.tensor.letterbox import Letterbox


@dataclass
class Timing:
    """Microseconds per stage for one image (see the Timing message in the .proto)."""

    decode_us: int = 0
    queue_us: int = 0
    inference_us: int = 0
    postprocess_us: int = 0
    total_us: int = 0
    batch_size: int = 0

    def as_dict(self) -> dict[str, int]:
        """Field name -> value, in the .proto's order (the proto mapping and reports use it)."""
        return dataclasses.asdict(self)


# The one list of Timing's fields, for code that reads them off a pb.Timing as well.
TIMING_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Timing))


def micros_since(start: float) -> int:
    """Microseconds since a time.perf_counter() reading (the unit of every Timing field)."""
    return int((time.perf_counter() - start) * 1e6)


@dataclass(frozen=True)
class Detection:
    faces: np.ndarray  # (M, 15) float32: box corners, score, 5 landmarks (x, y), client pixels
    width: int
    height: int
    timing: Timing


@dataclass(frozen=True)
class Limits:
    """No defaults: the server's come from its settings (facedet_server.app.config)."""

    max_pixels: int
    max_faces: int


@dataclass
class Prepared:
    """An image letterboxed to the network input, with the map back to the client's pixels."""

    canvas: np.ndarray  # (h, w, 3) uint8
    transform: Letterbox
    width: int
    height: int
    options: Options
    timing: Timing = field(default_factory=Timing)


class Timed(Protocol):
    """What the service needs of a prepared item: its timing, to record the queue wait in."""

    timing: Timing


P = TypeVar("P", bound=Timed)
P_co = TypeVar("P_co", bound=Timed, covariant=True)
K = TypeVar("K", bound=Hashable)


class Preparer(Protocol[P_co]):
    """The request-side half of a pipeline: checks and decodes one image on the CPU. It needs
    no model runtime, so a front-end process without the model (see `facedet_server.engine`)
    runs the same code as the process that has it."""

    @property
    def input_shape(self) -> tuple[int, int]: ...

    def prepare(self, image: ImageInput, options: Options) -> P_co: ...

    def prepare_inline(self, image: ImageInput, options: Options) -> P_co | None:
        """The item at once when making it costs no more than a header check, else None (the
        caller then runs `prepare` on the decode pool)."""
        ...


class RuntimeInfo(Protocol):
    """What the service reports about the model runtime (GetModelInfo) and closes at exit:
    a `runtime.base.Backend` in this process, a description of one in an engine process."""

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


class Pipeline(Protocol[P]):
    """What the service schedules: `preparer` on the decode pool (or inline on the event loop),
    `infer_batch` on an inference thread. `HostPipeline` (host pre/post-processing, any
    backend), `GpuPipeline` (a device backend) and `EnginePipeline` (the model in another
    process) implement it."""

    @property
    def backend(self) -> RuntimeInfo: ...

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def preparer(self) -> Preparer[P]: ...

    def infer_batch(self, items: Sequence[P]) -> Sequence[Detection | DetectError]: ...

    def warm_up(self) -> None: ...


def batch_chunks(keys: Sequence[K], max_batch: int) -> list[tuple[K, list[int]]]:
    """Indices of `keys` grouped by key (the network input shape), each group split into runs
    of at most `max_batch`: the model calls one batch of mixed shapes needs, in first-seen order."""
    groups: dict[K, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [
        (key, indices[first : first + max_batch])
        for key, indices in groups.items()
        for first in range(0, len(indices), max_batch)
    ]


class BatchingPipeline(abc.ABC, Generic[P]):
    """`detect` and `warm_up` for a pipeline that owns its `preparer` and `infer_batch`."""

    preparer: Preparer[P]

    @property
    def input_shape(self) -> tuple[int, int]:
        """The largest network input (width, height) this pipeline feeds the model."""
        return self.preparer.input_shape

    def prepare(self, image: ImageInput, options: Options) -> P:
        return self.preparer.prepare(image, options)

    def prepare_inline(self, image: ImageInput, options: Options) -> P | None:
        return self.preparer.prepare_inline(image, options)

    @abc.abstractmethod
    def infer_batch(self, items: Sequence[P]) -> list[Detection | DetectError]: ...

    def detect(self, image: ImageInput, options: Options | None = None) -> Detection:
        """All stages in a row on the calling thread (tests, in-process benchmarks)."""
        start = time.perf_counter()
        (detection,) = self.infer_batch([self.prepare(image, options or Options())])
        if isinstance(detection, DetectError):
            raise detection
        detection.timing.total_us = micros_since(start)
        return detection

    def warm_up(self) -> None:
        """One run at the largest input shape, so the first client pays nothing."""
        self.detect(gray_frame(*self.input_shape))
