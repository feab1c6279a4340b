"""JPEG decoders on the GPU, behind one small interface so the pipeline can pick one.

torchvision's `decode_jpeg(list, device="cuda")` runs nvJPEG's batched decoder on the SMs (and
the CPU for Huffman decoding), but one decoder per process behind a lock: about 11,000 img/s of
1280x720 on an H200 however many threads ask (docs/benchmarks.md), which caps an engine process
that decodes for every front end. The GPU's hardware JPEG engines (`gpu.nvjpeg_hw`) are a second,
independent decoder; `both` lets the inference threads use the two at once."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from typing import Protocol

import torch

from facedet_server.gpu.nvjpeg_hw import NvJpegHardware

# What --gpu-decode accepts; "auto" is resolved by `make_jpeg_decoders` to AUTO where that is
# available.
CHOICES = ("auto", "torchvision", "hardware", "both", "off")
AUTO = "torchvision"


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


class AlternatingJpeg:
    """Threads take turns between decoders that run on separate hardware (the JPEG engines,
    torchvision's nvJPEG on the SMs and the CPU): each calling thread keeps the decoder it was
    first given, so both decode at once."""

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


def torchvision_available() -> bool:
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except (ImportError, RuntimeError):
        return False
    return True


def make_jpeg_decoders(choice: str, device: torch.device) -> list[GpuJpegDecoder]:
    """The GPU JPEG decoders --gpu-decode names, in the order an image tries them: what the
    first refuses goes to the next, what all refuse to libjpeg-turbo on the CPU. Empty for
    `off` or a CPU device. A decoder named explicitly but unavailable is an error, not a
    silent fallback; `auto` takes what is available."""
    if choice not in CHOICES:
        raise ValueError(f"gpu_decode must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "off" or device.type != "cuda" or not torch.cuda.is_available():
        return []
    has_tv = torchvision_available()
    hardware: GpuJpegDecoder | None = None
    if choice in ("hardware", "both") or (choice == "auto" and AUTO in ("hardware", "both")):
        try:
            hardware = NvJpegHardware(device)
        except (RuntimeError, OSError) as exc:
            if choice != "auto":
                raise RuntimeError(f"--gpu-decode {choice}: no hardware JPEG decoder here: {exc}") from None
    if choice == "auto":
        usable = {
            "torchvision": has_tv,
            "hardware": hardware is not None,
            "both": has_tv and hardware is not None,
        }
        choice = next((c for c in (AUTO, "torchvision", "hardware") if usable[c]), "off")
        if choice == "off":
            return []
    if choice in ("torchvision", "both") and not has_tv:
        raise RuntimeError(f"--gpu-decode {choice}: torchvision with GPU JPEG decoding is not installed")
    # The engines decode baseline JPEGs only; torchvision's nvJPEG takes what they refuse
    # (progressive, 4:1:1) before the CPU has to.
    torchvision: list[GpuJpegDecoder] = [TorchvisionJpeg(device)] if has_tv else []
    if choice == "torchvision":
        return torchvision
    assert hardware is not None
    if choice == "hardware":
        return [hardware, *torchvision]
    return [AlternatingJpeg([hardware, *torchvision]), *torchvision]
