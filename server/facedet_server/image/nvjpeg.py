"""JPEG decode on the GPU: torchvision's nvJPEG batch decode, made safe for mixed batches.

torchvision keeps one nvJPEG decoder per process behind a lock, on nvJPEG's hardware backend
(the JPEG engines) where the GPU has them, held until the batch is decoded: about 11,000 img/s
of 1280x720 on an H200 however many threads ask. Two other ways to the same engines were
measured and dropped, as neither made whole batches faster (docs/benchmarks.md, fourth and
fifth passes): nvImageCodec and nvJPEG's hardware backend through ctypes."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

# What --gpu-decode accepts: auto uses nvJPEG where torchvision has it, on requires it.
CHOICES = ("auto", "on", "off")


def jpeg_tensors(datas: Sequence[bytes | memoryview]) -> list[torch.Tensor]:
    """The compressed bytes as uint8 tensors for nvJPEG, without copying them: nvJPEG only
    reads its input, so torch's warning about wrapping read-only memory does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning)
        return [torch.frombuffer(data, dtype=torch.uint8) for data in datas]


class NvJpegDecoder:
    """torchvision's `decode_jpeg(list, device=cuda)`: (3, h, w) uint8 images on the device,
    in the current CUDA stream's order; None where nvJPEG refused the image, which the caller
    then decodes on the CPU."""

    def __init__(self, device: torch.device) -> None:
        from torchvision.io import ImageReadMode, decode_jpeg

        self._decode_jpeg = decode_jpeg
        # RGB even for grayscale JPEGs: a (1, h, w) image cannot be stacked with the (3, h, w)
        # images of the same size in the batch's letterbox.
        self._mode = ImageReadMode.RGB
        self.device = device

    def decode(self, datas: Sequence[bytes | memoryview]) -> list[torch.Tensor | None]:
        tensors = jpeg_tensors(datas)
        try:
            return list(self._decode_jpeg(tensors, mode=self._mode, device=self.device))
        except RuntimeError:
            pass
        # One image nvJPEG cannot decode fails the whole call without saying which; one by one,
        # only that image goes to the CPU rather than the whole batch.
        out: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                out.append(self._decode_jpeg(tensor, mode=self._mode, device=self.device))
            except RuntimeError:
                out.append(None)
        return out


def nvjpeg_missing() -> str | None:
    """Why nvJPEG cannot run in this process, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except (ImportError, RuntimeError) as exc:
        return f"torchvision with GPU JPEG decoding is not installed ({exc})"
    return None


def make_jpeg_decoder(choice: str, device: torch.device) -> NvJpegDecoder | None:
    """The GPU JPEG decoder --gpu-decode asks for; None decodes on the CPU (`off`, a CPU
    device, or `auto` where nvJPEG cannot run). `on` where it cannot is an error, not a silent
    fallback."""
    if choice not in CHOICES:
        raise ValueError(f"gpu_decode must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "off" or device.type != "cuda":
        return None
    missing = nvjpeg_missing()
    if missing is not None:
        if choice == "on":
            raise RuntimeError(f"--gpu-decode on: nvJPEG cannot run here: {missing}")
        return None
    return NvJpegDecoder(device)


def upright_chw(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (c, h, w) image as stored -> the upright picture its EXIF orientation describes; the
    same turns as `facedet_server.image.exif.upright`, on the image's device."""
    if orientation in (2, 4, 5, 7):  # the mirrored ones: flip first, then turn as 1, 3, 8, 6
        image = torch.flip(image, dims=(2,))
        orientation = {2: 1, 4: 3, 5: 8, 7: 6}[orientation]
    if orientation == 3:
        return torch.flip(image, dims=(1, 2))
    if orientation == 6:
        return torch.rot90(image, k=-1, dims=(1, 2)).contiguous()
    if orientation == 8:
        return torch.rot90(image, k=1, dims=(1, 2)).contiguous()
    return image
