"""nvJPEG's hardware JPEG decoder (the NVJPG engines of A100, H100 and H200), through ctypes.

Why not torchvision or nvImageCodec: torchvision keeps one nvJPEG decoder per process behind a
lock, and nvImageCodec's Python binding keeps the interpreter lock while its decode runs, so in
both the engine's inference threads queue (docs/benchmarks.md, fourth pass). Here each thread
has its own decode state, every nvJPEG call releases the interpreter lock (ctypes does), the
output goes straight into tensors from torch's caching allocator, and the decode is queued on the
caller's CUDA stream like any kernel. The engines decode baseline JPEGs only (no progressive, no
4:1:0/4:1:1); `decode` says None for what they cannot take, and the caller tries another decoder.

libnvjpeg comes with torchvision's CUDA wheels, the `nvidia-nvjpeg` wheel or the CUDA toolkit;
`find_nvjpeg` looks in those places (or FACEDET_NVJPEG, a path)."""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

BACKEND_HARDWARE = 3
OUTPUT_RGB = 3  # planar R, G, B: the (3, h, w) layout the letterbox takes
STATUS = {
    1: "NOT_INITIALIZED",
    2: "INVALID_PARAMETER",
    3: "BAD_JPEG",
    4: "JPEG_NOT_SUPPORTED",
    5: "ALLOCATOR_FAILURE",
    6: "EXECUTION_FAILED",
    7: "ARCH_MISMATCH",
    8: "INTERNAL_ERROR",
    9: "IMPLEMENTATION_NOT_SUPPORTED",
    10: "INCOMPLETE_BITSTREAM",
}


class NvjpegError(RuntimeError):
    def __init__(self, call: str, status: int) -> None:
        super().__init__(f"{call} failed: NVJPEG_STATUS_{STATUS.get(status, status)}")
        self.status = status


class NvjpegImage(ctypes.Structure):
    _fields_ = [("channel", ctypes.c_void_p * 4), ("pitch", ctypes.c_size_t * 4)]


def find_nvjpeg() -> Path | str | None:
    """The libnvjpeg to load: $FACEDET_NVJPEG, one the loader finds, or one inside an installed
    wheel (nvidia-nvjpeg, torchvision's bundled copy)."""
    if os.environ.get("FACEDET_NVJPEG"):
        return Path(os.environ["FACEDET_NVJPEG"])
    for name in ("libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    patterns = (
        "nvidia/cu13/lib/libnvjpeg.so.*",
        "nvidia/nvjpeg/lib/libnvjpeg.so.*",
        "torchvision.libs/libnvjpeg*.so*",
    )
    for entry in sys.path:
        for pattern in patterns:
            found = sorted(glob.glob(os.path.join(entry, pattern)))
            if found:
                return Path(found[0])
    return None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, u, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_size_t
    signatures: dict[str, list[Any]] = {
        "nvjpegCreateEx": [i, p, p, u, ctypes.POINTER(p)],
        "nvjpegDestroy": [p],
        "nvjpegJpegStateCreate": [p, ctypes.POINTER(p)],
        "nvjpegJpegStateDestroy": [p],
        "nvjpegJpegStreamCreate": [p, ctypes.POINTER(p)],
        "nvjpegJpegStreamDestroy": [p],
        "nvjpegJpegStreamParseHeader": [p, p, sz, p],
        "nvjpegJpegStreamGetFrameDimensions": [p, ctypes.POINTER(u), ctypes.POINTER(u)],
        "nvjpegDecodeBatchedSupported": [p, p, ctypes.POINTER(i)],
        "nvjpegDecodeBatchedInitialize": [p, p, i, i, i],
        "nvjpegDecodeBatched": [p, p, ctypes.POINTER(p), ctypes.POINTER(sz), ctypes.POINTER(NvjpegImage), p],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, ctypes.c_int
    return lib


class _ThreadState:
    """What nvJPEG needs one of per thread: a decode state and a parsed-header holder. It
    also keeps the last call's inputs alive until the next call: the decode runs on the stream
    after `decode` returns."""

    def __init__(self, lib: ctypes.CDLL, handle: ctypes.c_void_p) -> None:
        self.lib = lib
        self.state, self.stream = ctypes.c_void_p(), ctypes.c_void_p()
        _check("nvjpegJpegStateCreate", lib.nvjpegJpegStateCreate(handle, ctypes.byref(self.state)))
        _check("nvjpegJpegStreamCreate", lib.nvjpegJpegStreamCreate(handle, ctypes.byref(self.stream)))
        self.inflight: list[Any] = []

    def __del__(self) -> None:  # when its thread ends
        try:
            self.lib.nvjpegJpegStreamDestroy(self.stream)
            self.lib.nvjpegJpegStateDestroy(self.state)
        except Exception:  # interpreter shutdown: the library may be gone; so is the process
            pass


def _check(call: str, status: int) -> None:
    if status != 0:
        raise NvjpegError(call, status)


class NvJpegHardware:
    """The GpuJpegDecoder (see gpu.jpeg) on nvJPEG's hardware backend; one handle per process,
    one decode state per calling thread."""

    name = "hardware"

    def __init__(self, device: torch.device, library: Path | str | None = None) -> None:
        path = library or find_nvjpeg()
        if path is None:
            raise RuntimeError("libnvjpeg not found (install torchvision's CUDA wheel or nvidia-nvjpeg)")
        self.device = device
        self.library = str(path)
        self._lib = _bind(ctypes.CDLL(self.library))
        self._handle = ctypes.c_void_p()
        with torch.cuda.device(device):
            status = self._lib.nvjpegCreateEx(BACKEND_HARDWARE, None, None, 0, ctypes.byref(self._handle))
        if status != 0:  # ARCH_MISMATCH / NOT_SUPPORTED on GPUs without JPEG engines
            raise NvjpegError("nvjpegCreateEx(NVJPEG_BACKEND_HARDWARE)", status)
        self._local = threading.local()

    def _thread_state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _ThreadState(self._lib, self._handle)
        return state

    def _parse(self, state: _ThreadState, data: np.ndarray) -> tuple[int, int] | None:
        """(width, height) of a JPEG the engines can decode, else None."""
        lib = self._lib
        if lib.nvjpegJpegStreamParseHeader(self._handle, data.ctypes.data, data.nbytes, state.stream) != 0:
            return None
        unsupported = ctypes.c_int(1)
        if lib.nvjpegDecodeBatchedSupported(self._handle, state.stream, ctypes.byref(unsupported)) != 0:
            return None
        if unsupported.value != 0:
            return None
        width, height = ctypes.c_uint(), ctypes.c_uint()
        if (
            lib.nvjpegJpegStreamGetFrameDimensions(state.stream, ctypes.byref(width), ctypes.byref(height))
            != 0
        ):
            return None
        return width.value, height.value

    def decode(self, datas: Sequence[bytes | memoryview]) -> list[torch.Tensor | None]:
        state = self._thread_state()
        out: list[torch.Tensor | None] = [None] * len(datas)
        arrays = [np.frombuffer(data, np.uint8) for data in datas]
        sizes: dict[int, tuple[int, int]] = {}
        for i, array in enumerate(arrays):
            size = self._parse(state, array)
            if size is not None:
                sizes[i] = size
        if not sizes:
            return out
        # Same-size images (a video stream's frames) share one allocation; each is a view.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in sizes.items():
            groups.setdefault(size, []).append(i)
        for (width, height), members in groups.items():
            block = torch.empty((len(members), 3, height, width), dtype=torch.uint8, device=self.device)
            for k, i in enumerate(members):
                out[i] = block[k]
        order = list(sizes)
        n = len(order)
        pointers = (ctypes.c_void_p * n)(*(arrays[i].ctypes.data for i in order))
        lengths = (ctypes.c_size_t * n)(*(arrays[i].nbytes for i in order))
        images = (NvjpegImage * n)()
        for slot, i in enumerate(order):
            tensor = out[i]
            assert tensor is not None
            plane = tensor.shape[1] * tensor.shape[2]
            base = tensor.data_ptr()
            for c in range(3):
                images[slot].channel[c] = base + c * plane
                images[slot].pitch[c] = tensor.shape[2]
        stream = torch.cuda.current_stream(self.device).cuda_stream
        lib = self._lib
        status = lib.nvjpegDecodeBatchedInitialize(self._handle, state.state, n, 1, OUTPUT_RGB)
        if status == 0:
            status = lib.nvjpegDecodeBatched(self._handle, state.state, pointers, lengths, images, stream)
        if status != 0:
            # A corrupt image fails the whole batch without saying which: the caller's next
            # decoder takes them all.
            return [None] * len(datas)
        state.inflight = [arrays, pointers, lengths, images]
        return out

    def close(self) -> None:
        if self._handle:
            self._local = threading.local()
            self._lib.nvjpegDestroy(self._handle)
            self._handle = ctypes.c_void_p()


def hardware_decoder_available(device: torch.device) -> bool:
    """A GPU with JPEG engines and a libnvjpeg that drives them."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        NvJpegHardware(device).close()
    except (RuntimeError, OSError, AttributeError):
        return False
    return True
