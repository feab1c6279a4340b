"""`GpuPipeline`: decode (nvJPEG, `image.nvjpeg`), letterbox, model and NMS on the GPU, over any
`DeviceBackend` (our PyTorch network, a TensorRT plan with decoded outputs). The CPU side of a
request (`GpuPreparer`, in `pipeline.gpu_prepare`) only checks the header against the limits, so
the decode pool stays cheap and the GPU sees whole batches of compressed bytes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import torch

from facedet_server.errors import DetectError, InvalidImage
from facedet_server.faces.gpu_select import select_faces_batch
from facedet_server.image.inputs import EncodedImage, decode_image
from facedet_server.image.nvjpeg import NvJpegDecoder, make_jpeg_decoder, upright_chw
from facedet_server.pipeline.base import BatchingPipeline, Detection, Limits, batch_chunks, micros_since
from facedet_server.pipeline.gpu_prepare import GpuPrepared, GpuPreparer
from facedet_server.runtime.base import DeviceBackend
from facedet_server.tensor.gpu_letterbox import letterbox_batch

__all__ = ["GpuPipeline", "GpuPrepared"]


class GpuPipeline(BatchingPipeline[GpuPrepared]):
    preparer: GpuPreparer

    def __init__(
        self,
        backend: DeviceBackend,
        limits: Limits,
        input_size: int = 640,
        gpu_decode: str = "auto",
        rectangular: bool = True,
    ) -> None:
        """`gpu_decode`: auto, on or off (`image.nvjpeg.CHOICES`); off decodes JPEGs on the CPU."""
        self.backend = backend
        self.spec = backend.spec
        self.limits = limits
        self.jpeg: NvJpegDecoder | None = make_jpeg_decoder(gpu_decode, backend.torch_device)
        self.preparer = GpuPreparer(self.spec, self.limits, input_size, self.jpeg is not None, rectangular)

    def target_for(self, width: int, height: int) -> tuple[int, int]:
        return self.preparer.target_for(width, height)

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
                    out[i] = upright_chw(tensor, items[i].orientation)
            jpeg_idx = [i for i, tensor in zip(jpeg_idx, decoded, strict=True) if tensor is None]
        for i in jpeg_idx:
            item = items[i]
            try:
                fallback = decode_image(
                    EncodedImage(bytes(item.jpeg or b"")),
                    self.limits.max_pixels,
                    self.input_shape,
                    item.options.exif_orientation,
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
            targets = [self.target_for(items[i].width, items[i].height) for i in good]
            for (w, h), chunk in batch_chunks(targets, self.backend.max_batch):
                indices = [good[j] for j in chunk]
                tensors = [img for i in indices if isinstance(img := images[i], torch.Tensor)]
                detections = self._run_chunk([items[i] for i in indices], tensors, w, h, start)
                for i, detection in zip(indices, detections, strict=True):
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

    def warm_up(self) -> None:
        """Prepare this thread for the common shapes (square, 16:9 landscape and portrait) at
        every batch size the backend distinguishes, then run one real batch, so no request
        pays for it."""
        shapes = sorted({self.input_shape, self.target_for(1280, 720), self.target_for(720, 1280)})
        self.backend.warm_up(shapes)
        super().warm_up()
