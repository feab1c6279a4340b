"""The host pipeline, stage by stage: bytes -> image -> tensor -> raw output -> faces.

`HostPipeline` owns a backend and the limits, and exposes the stages the server schedules
separately (`preparer.prepare` on a decode thread pool, `infer_batch` on the inference thread,
results back to the caller) plus `detect`, which runs them in a row for tests and in-process
benchmarks. Any `Backend` runs here: it takes a host float32 batch and returns host outputs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facedet_server.errors import DetectError
from facedet_server.faces.heads import decode_heads
from facedet_server.faces.options import Options
from facedet_server.faces.select import select_faces
from facedet_server.image.inputs import ImageInput, decode_image
from facedet_server.model.spec import ModelSpec
from facedet_server.pipeline.base import (
    BatchingPipeline,
    Detection,
    Limits,
    Prepared,
    batch_chunks,
    micros_since,
)
from facedet_server.runtime.base import Backend
from facedet_server.tensor.letterbox import input_shape_for, letterbox, to_tensor


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
        decoded = decode_image(image, self.limits.max_pixels, self.input_shape, options.exif_orientation)
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


class HostPipeline(BatchingPipeline[Prepared]):
    preparer: HostPreparer

    def __init__(self, backend: Backend, limits: Limits, input_size: int = 640) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.limits = limits
        self.preparer = HostPreparer(self.spec, self.limits, input_size)

    @property
    def fixed_shape(self) -> tuple[int, int] | None:
        return self.preparer.fixed_shape

    def infer_batch(self, items: Sequence[Prepared]) -> list[Detection | DetectError]:
        """Run the model on images of any shapes: images of one input shape share a model call."""
        results: list[Detection | DetectError | None] = [None] * len(items)
        for _, chunk in batch_chunks([item.canvas.shape for item in items], self.backend.max_batch):
            for index, detection in zip(chunk, self._run_chunk([items[i] for i in chunk]), strict=True):
                results[index] = detection
        return [r for r in results if r is not None]

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
