"""JPEG decoders on the GPU, behind one small interface so the pipeline can pick one.

torchvision's `decode_jpeg(list, device="cuda")` runs nvJPEG's batched decoder, but one decoder
per process behind a lock: about 11,000 img/s of 1280x720 on an H200 however many threads ask
(docs/benchmarks.md), which caps an engine process that decodes for every front end.
nvImageCodec (NVIDIA's Python package around nvJPEG, `nvidia-nvimgcodec-cu13`) gives each
thread its own decoder and, on A100/H100/H200, uses the GPU's hardware JPEG engines (NVJPG),
which leave the SMs to the model."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

# What --gpu-decode accepts; "auto" is resolved by `make_jpeg_decoders` to AUTO where that is
# installed.
CHOICES = ("auto", "nvimgcodec", "torchvision", "both", "off")
AUTO = "torchvision"
# nvImageCodec backends, in the order it tries them for an image (see `NvImageCodecJpeg`).
NVIMGCODEC_BACKENDS = {
    "hw": ("HW_GPU_ONLY",),
    "cuda": ("GPU_ONLY",),
    "hybrid": ("HYBRID_CPU_GPU",),
    "hw+cuda": ("HW_GPU_ONLY", "GPU_ONLY"),
}


class GpuJpegDecoder(Protocol):
    name: str

    def decode(self, datas: Sequence[bytes | memoryview]) -> list[torch.Tensor | None]:
        """(C, h, w) uint8 images on the device, ready in the current CUDA stream's order;
        None where this decoder refused the image (the caller decodes those on the CPU)."""
        ...


def jpeg_tensors(datas: Sequence[bytes | memoryview]) -> list[torch.Tensor]:
    """The compressed bytes as uint8 tensors for nvJPEG, without copying them: nvJPEG only
    reads its input, so torch's warning about wrapping read-only memory does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning)
        return [torch.frombuffer(data, dtype=torch.uint8) for data in datas]


class TorchvisionJpeg:
    """torchvision's nvJPEG batch decode: one decoder per process, behind a lock."""

    name = "torchvision"

    def __init__(self, device: torch.device) -> None:
        from torchvision.io import ImageReadMode, decode_jpeg

        self._decode_jpeg = decode_jpeg
        # RGB even for grayscale JPEGs: a (1, h, w) image cannot be stacked with the (3, h, w)
        # images of the same size in the batch's letterbox.
        self._mode = ImageReadMode.RGB
        self.device = device

    def decode(self, datas: Sequence[bytes | memoryview]) -> list[torch.Tensor | None]:
        try:
            return list(self._decode_jpeg(jpeg_tensors(datas), mode=self._mode, device=self.device))
        except RuntimeError:
            # One image it cannot decode fails the whole call; which one is not said.
            return [None] * len(datas)


class NvImageCodecJpeg:
    """nvImageCodec's batch decode with one decoder per calling thread, so the engine's
    inference threads decode concurrently; `backends` picks hardware (NVJPG) and/or CUDA
    decoding, and an image the first backend cannot take goes to the next.

    Each thread also keeps the images it decoded into and decodes the next batch into the same
    buffers: freeing device memory synchronises the whole device, which would stall the other
    threads' batches. So a returned tensor is valid until the same thread's next `decode`."""

    name = "nvimgcodec"

    def __init__(self, device: torch.device, backends: str = "hw+cuda") -> None:
        from nvidia import nvimgcodec

        self._codec: Any = nvimgcodec
        self.device = device
        self.device_id = device.index if device.index is not None else torch.cuda.current_device()
        self.backends = backends
        self._kinds = [getattr(nvimgcodec, kind) for kind in NVIMGCODEC_BACKENDS[backends]]
        # Planar RGB is the (3, h, w) layout the letterbox takes; EXIF orientation is ignored,
        # as on the CPU path, so boxes are in the stored pixel grid on every path.
        self._params = nvimgcodec.DecodeParams(
            apply_exif_orientation=False, color_spec=nvimgcodec.SRGB, sample_format=nvimgcodec.P_RGB
        )
        self._local = threading.local()

    def _thread_state(self) -> tuple[Any, list[Any]]:
        local = self._local
        if not hasattr(local, "decoder"):
            codec = self._codec
            local.decoder = codec.Decoder(
                device_id=self.device_id, backends=[codec.Backend(kind) for kind in self._kinds]
            )
            local.images = []
        return local.decoder, local.images

    def decode(self, datas: Sequence[bytes | memoryview]) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = [None] * len(datas)
        streams, index = [], []
        for i, data in enumerate(datas):
            try:  # a numpy view of the bytes: no copy, and never mistaken for a file name
                streams.append(self._codec.CodeStream(np.frombuffer(data, np.uint8)))
            except RuntimeError:  # header it cannot parse: left to the fallback
                continue
            index.append(i)
        if not streams:
            return out
        decoder, pool = self._thread_state()
        n = len(streams)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if len(pool) >= n:
            images = decoder.decode(streams, images=pool[:n], params=self._params, cuda_stream=stream)
        else:
            images = decoder.decode(streams, params=self._params, cuda_stream=stream)
        for slot, (i, image) in enumerate(zip(index, images, strict=True)):
            if image is None:
                continue
            out[i] = torch.utils.dlpack.from_dlpack(image)
            if slot == len(pool):
                pool.append(image)  # grows to the largest batch this thread has decoded
        return out


class AlternatingJpeg:
    """Threads take turns between decoders that run on separate hardware (nvImageCodec on the
    hardware JPEG engines, torchvision's nvJPEG on the SMs and the CPU): each calling thread
    keeps the decoder it was first given, so both decode at once."""

    name = "both"

    def __init__(self, decoders: Sequence[GpuJpegDecoder]) -> None:
        self.decoders = list(decoders)
        self._local = threading.local()
        self._next = 0
        self._lock = threading.Lock()

    def decode(self, datas: Sequence[bytes | memoryview]) -> list[torch.Tensor | None]:
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            with self._lock:
                decoder = self._local.decoder = self.decoders[self._next % len(self.decoders)]
                self._next += 1
        result: list[torch.Tensor | None] = decoder.decode(datas)
        return result


def nvimgcodec_available() -> bool:
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        return False
    return True


def torchvision_available() -> bool:
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except (ImportError, RuntimeError):
        return False
    return True


def make_jpeg_decoders(choice: str, device: torch.device) -> list[GpuJpegDecoder]:
    """The GPU JPEG decoders --gpu-decode names, in the order an image tries them: what the
    first refuses goes to the next, what all refuse to libjpeg-turbo on the CPU. Empty for
    `off` or a CPU device. A decoder named explicitly but not installed is an error, not a
    silent fallback; `auto` takes what is installed."""
    if choice not in CHOICES:
        raise ValueError(f"gpu_decode must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "off" or device.type != "cuda" or not torch.cuda.is_available():
        return []
    has_nv, has_tv = nvimgcodec_available(), torchvision_available()
    if choice == "auto":
        usable = {"torchvision": has_tv, "nvimgcodec": has_nv, "both": has_nv and has_tv}
        choice = next((c for c in (AUTO, "torchvision", "nvimgcodec") if usable[c]), "off")
        if choice == "off":
            return []
    if choice in ("nvimgcodec", "both") and not has_nv:
        raise RuntimeError(
            f"--gpu-decode {choice}: nvImageCodec is not installed "
            "(pip install 'nvidia-nvimgcodec-cu13[nvjpeg]')"
        )
    if choice in ("torchvision", "both") and not has_tv:
        raise RuntimeError(f"--gpu-decode {choice}: torchvision with GPU JPEG decoding is not installed")
    # The hardware engines decode baseline JPEGs only; torchvision's nvJPEG takes what they
    # refuse (progressive, some subsamplings) before the CPU has to.
    torchvision: list[GpuJpegDecoder] = [TorchvisionJpeg(device)] if has_tv else []
    if choice == "torchvision":
        return torchvision
    hardware = NvImageCodecJpeg(device, "hw")
    if choice == "nvimgcodec":
        return [hardware, *torchvision]
    return [AlternatingJpeg([hardware, *torchvision]), *torchvision]
