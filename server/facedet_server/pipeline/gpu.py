"""`GpuDetector`: the Detector interface with decode (nvJPEG, `gpu.jpeg`), letterbox, model and NMS on the
GPU. The CPU side of a request (`GpuPreparer`, in `gpu.prepare`) only checks the header against
the limits, so the decode pool stays cheap and the GPU sees whole batches of compressed bytes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import numpy as np
import torch

from facedet_server.errors import DetectError, InvalidImage
from facedet_server.faces.gpu_select import select_faces_batch
from facedet_server.faces.options import Options
from facedet_server.image.nvjpeg import NvJpegDecoder, make_jpeg_decoder
from facedet_server.pipeline.gpu_prepare import GpuPrepared, GpuPreparer
from facedet_server.pipeline.host import (
    Detection,
    EncodedImage,
    ImageInput,
    Limits,
    RawFrame,
    decode_image,
    micros_since,
)
from facedet_server.runtime.torch_cuda import TorchCudaBackend
from facedet_server.tensor.gpu_letterbox import letterbox_batch

__all__ = ["GpuDetector", "GpuPrepared"]


class GpuDetector:
    def __init__(
        self,
        backend: TorchCudaBackend,
        limits: Limits | None = None,
        input_size: int = 640,
        gpu_decode: str = "auto",
        rectangular: bool = True,
    ) -> None:
        """`gpu_decode`: auto, on or off (`gpu.jpeg.CHOICES`); off decodes JPEGs on the CPU."""
        self.backend = backend
        self.spec = backend.spec
        self.limits = limits or Limits()
        self.jpeg: NvJpegDecoder | None = make_jpeg_decoder(gpu_decode, backend.torch_device)
        self.preparer = GpuPreparer(self.spec, self.limits, input_size, self.jpeg is not None, rectangular)

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.preparer.input_shape

    def target_for(self, width: int, height: int) -> tuple[int, int]:
        return self.preparer.target_for(width, height)

    def prepare_inline(self, image: ImageInput, options: Options) -> GpuPrepared | None:
        return self.preparer.prepare_inline(image, options)

    def prepare(self, image: ImageInput, options: Options) -> GpuPrepared:
        return self.preparer.prepare(image, options)

    def _to_device(self, items: Sequence[GpuPrepared]) -> list[torch.Tensor | DetectError]:
        """(3, h, w) uint8 images on the GPU; nvJPEG decodes all JPEGs of the batch in one call,
        and what it refuses (corrupt, unusual encodings) falls back to libjpeg-turbo."""
        device = self.backend.torch_device
        out: list[torch.Tensor | DetectError] = [InvalidImage("not decoded")] * len(items)
        jpeg_idx = [i for i, item in enumerate(items) if item.jpeg is not None]
        if jpeg_idx and self.jpeg is not None:
            decoded = self.jpeg.decode([items[i].jpeg or b"" for i in jpeg_idx])
            for i, tensor in zip(jpeg_idx, decoded, strict=True):
                if tensor is not None:
                    out[i] = tensor
            jpeg_idx = [i for i, tensor in zip(jpeg_idx, decoded, strict=True) if tensor is None]
        for i in jpeg_idx:
            item = items[i]
            try:
                fallback = decode_image(
                    EncodedImage(bytes(item.jpeg or b"")), self.limits.max_pixels, self.input_shape
                )
            except DetectError as exc:
                out[i] = exc
                continue
            item.pixels, item.scale = fallback.pixels, (fallback.scale_x, fallback.scale_y)
        for i, item in enumerate(items):
            if item.pixels is not None:
                pixels = item.pixels if item.pixels.flags.writeable else item.pixels.copy()
                host = torch.from_numpy(pixels)  # torch refuses to wrap read-only memory
                out[i] = host.to(device, non_blocking=True).permute(2, 0, 1)
        return out

    def infer_batch(self, items: Sequence[GpuPrepared]) -> list[Detection | DetectError]:
        stream = self.backend.stream()
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            start = time.perf_counter()
            images = self._to_device(items)
            results: list[Detection | DetectError] = [
                img if isinstance(img, DetectError) else InvalidImage("not run") for img in images
            ]
            good = [i for i, img in enumerate(images) if isinstance(img, torch.Tensor)]
            by_shape: dict[tuple[int, int], list[int]] = {}
            for i in good:
                by_shape.setdefault(self.target_for(items[i].width, items[i].height), []).append(i)
            for (w, h), indices in by_shape.items():
                for first in range(0, len(indices), self.backend.max_batch):
                    chunk = indices[first : first + self.backend.max_batch]
                    tensors = [img for i in chunk if isinstance(img := images[i], torch.Tensor)]
                    detections = self._run_chunk([items[i] for i in chunk], tensors, w, h, start)
                    for i, detection in zip(chunk, detections, strict=True):
                        results[i] = detection
        return results

    def _run_chunk(
        self, items: list[GpuPrepared], images: list[torch.Tensor], w: int, h: int, start: float
    ) -> list[Detection]:
        backend = self.backend
        batch = torch.empty((len(items), 3, h, w), dtype=backend.dtype, device=backend.torch_device)
        transforms = letterbox_batch(
            images, batch, self.spec.pad_value, self.spec.scale, [it.scale for it in items]
        )
        candidates = backend.forward(batch)
        post_start = time.perf_counter()
        faces = select_faces_batch(
            candidates, [it.options for it in items], transforms, [(it.width, it.height) for it in items]
        )  # ends with the one device->host copy, which also waits for the model
        post_us = micros_since(post_start)
        inference_us = micros_since(start) - post_us
        detections = []
        for item, item_faces in zip(items, faces, strict=True):
            timing = item.timing
            timing.inference_us, timing.postprocess_us, timing.batch_size = inference_us, post_us, len(items)
            detections.append(Detection(item_faces, item.width, item.height, timing))
        return detections

    def detect(self, image: ImageInput, options: Options | None = None) -> Detection:
        start = time.perf_counter()
        (result,) = self.infer_batch([self.prepare(image, options or Options())])
        if isinstance(result, DetectError):
            raise result
        result.timing.total_us = micros_since(start)
        return result

    def warm_up(self) -> None:
        """Capture this thread's graphs for the common shapes (square, 16:9 landscape and
        portrait) at every batch bucket, then run one real batch, so no request pays for it."""
        shapes = sorted({self.input_shape, self.target_for(1280, 720), self.target_for(720, 1280)})
        self.backend.warm_up(shapes)
        w, h = self.input_shape
        frame = RawFrame(w, h, "RGB8", np.full((h, w, 3), 114, np.uint8).tobytes())
        self.infer_batch([self.prepare(frame, Options())])
