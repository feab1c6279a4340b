"""The request side of the GPU pipeline, without torch: a JPEG that nvJPEG will decode needs
only its header checked against the limits on the CPU; anything else is decoded here.

Kept apart from `pipeline.gpu` so a front-end process that feeds an engine process (see
`facedet_server.engine`) runs the same checks without importing torch or touching the GPU."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import simplejpeg

from facedet_server.errors import InvalidImage
from facedet_server.faces.options import Options
from facedet_server.image.decode import JPEG_MAGIC, check_pixels
from facedet_server.image.exif import UPRIGHT, jpeg_orientation, upright_size
from facedet_server.image.inputs import EncodedImage, ImageInput, decode_image
from facedet_server.model.spec import ModelSpec
from facedet_server.pipeline.base import Limits, Timing, micros_since
from facedet_server.tensor.letterbox import input_shape_for


@dataclass
class GpuPrepared:
    options: Options
    width: int
    height: int
    # Compressed bytes to decode on the GPU: bytes in the process that received them, a
    # memoryview into the received frame in an engine process (see `facedet_server.engine.codec`).
    jpeg: bytes | memoryview | None = None
    pixels: np.ndarray | None = None  # already decoded on the CPU (raw frames, PNG, fallbacks)
    scale: tuple[float, float] = (1.0, 1.0)
    # The EXIF orientation still to apply to `jpeg` once decoded (1: none); width and height
    # are already the upright picture's.
    orientation: int = UPRIGHT
    timing: Timing = field(default_factory=Timing)


@dataclass(frozen=True)
class GpuPreparer:
    spec: ModelSpec
    limits: Limits
    input_size: int = 640
    gpu_decode: bool = True
    # Rectangular inputs (long side input_size, short side a multiple of 32) skip most of the
    # padding; square ones reproduce the CPU path's 640x640 exactly, for comparisons.
    rectangular: bool = True

    @property
    def model_shape(self) -> tuple[int, int] | None:
        """The (w, h) a fixed-shape model (a static TensorRT plan, say) takes; None if any."""
        spec = self.spec
        return None if spec.dynamic_shape else (spec.input_width or 0, spec.input_height or 0)

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.model_shape or (self.input_size, self.input_size)

    def target_for(self, width: int, height: int) -> tuple[int, int]:
        fixed = self.model_shape or (None if self.rectangular else self.input_shape)
        return input_shape_for(width, height, fixed, self.input_size, self.spec.size_multiple)

    def prepare_inline(self, image: ImageInput, options: Options) -> GpuPrepared | None:
        """A JPEG that nvJPEG will decode needs only its header checked against the limits
        (microseconds), cheaper than a hop to the decode pool; None for anything else."""
        if not (self.gpu_decode and isinstance(image, EncodedImage) and image.data.startswith(JPEG_MAGIC)):
            return None
        start = time.perf_counter()
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(image.data)
        except ValueError as exc:
            raise InvalidImage(f"JPEG header is unreadable: {exc}") from None
        check_pixels(width, height, self.limits.max_pixels)
        if colorspace == "CMYK":  # nvJPEG has no CMYK output; those go through the CPU
            return None
        orientation = jpeg_orientation(image.data) if options.exif_orientation else UPRIGHT
        width, height = upright_size(width, height, orientation)
        prepared = GpuPrepared(options, width, height, jpeg=image.data, orientation=orientation)
        prepared.timing.decode_us = micros_since(start)
        return prepared

    def prepare(self, image: ImageInput, options: Options) -> GpuPrepared:
        inline = self.prepare_inline(image, options)
        if inline is not None:
            return inline
        start = time.perf_counter()
        decoded = decode_image(image, self.limits.max_pixels, self.input_shape, options.exif_orientation)
        prepared = GpuPrepared(
            options,
            decoded.width,
            decoded.height,
            pixels=decoded.pixels,
            scale=(decoded.scale_x, decoded.scale_y),
        )
        prepared.timing.decode_us = micros_since(start)
        return prepared
