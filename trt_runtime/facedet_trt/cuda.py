"""The CUDA plumbing under the TensorRT runner: streams, events, pinned and device buffers, copies,
graphs, and a status check on every call. Nothing here knows about TensorRT, so it is tested on the
GPU machine on its own.

Built on cuda-python's `cuda.bindings.runtime`, where every call returns `(err, *values)`; `check`
turns a failed status into a `CudaError` naming the call, so no status is silently dropped.

The module imports without cuda-python (the CPU machines have none); the first CUDA call then
raises an ImportError saying what to install.

Lifetimes: every resource has an idempotent `close()` and is a context manager. `__del__` frees as
a last resort only; the runner closes explicitly, because a finaliser may run on any thread and at
interpreter shutdown, when the CUDA runtime may already be gone.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    from cuda.bindings import driver as _driver
    from cuda.bindings import runtime as _cudart

    _IMPORT_ERROR: ImportError | None = None
except ImportError as _exc:  # pragma: no cover - depends on the machine
    _driver = None
    _cudart = None
    _IMPORT_ERROR = _exc


class CudaError(RuntimeError):
    """A CUDA call returned an error status."""

    def __init__(self, call: str, code: int, name: str, description: str) -> None:
        super().__init__(f"{call} failed: {name} ({code}): {description}")
        self.call = call
        self.code = code
        self.name = name
        self.description = description


def available() -> bool:
    """Whether cuda-python imports here (says nothing about a GPU being present)."""
    return _cudart is not None


def _rt() -> Any:
    if _cudart is None:
        raise ImportError(
            "facedet_trt needs NVIDIA's cuda-python bindings for CUDA: pip install 'cuda-bindings' "
            "matching the CUDA major of the driver (e.g. cuda-bindings>=13 for CUDA 13)"
        ) from _IMPORT_ERROR
    return _cudart


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _describe(err: Any) -> tuple[int, str, str]:
    rt = _rt()
    if isinstance(err, rt.cudaError_t):
        _, name = rt.cudaGetErrorName(err)
        _, desc = rt.cudaGetErrorString(err)
    elif _driver is not None and isinstance(err, _driver.CUresult):
        _, name = _driver.cuGetErrorName(err)
        _, desc = _driver.cuGetErrorString(err)
    else:
        return int(err), str(err), "unknown status type"
    return int(err), _text(name), _text(desc)


def _is_success(err: Any) -> bool:
    rt = _rt()
    if isinstance(err, rt.cudaError_t):
        return bool(err == rt.cudaError_t.cudaSuccess)
    if _driver is not None and isinstance(err, _driver.CUresult):
        return bool(err == _driver.CUresult.CUDA_SUCCESS)
    raise TypeError(f"not a CUDA status: {err!r}")


def check(result: Any, call: str = "CUDA call") -> Any:
    """Unpack a cuda.bindings result `(err, *values)`: raise CudaError on failure, else return
    None for no values, the value for one, the tuple for several."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if not _is_success(err):
        raise CudaError(call, *_describe(err))
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# --- devices ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "9.0"
    total_memory: int


def device_count() -> int:
    rt = _rt()
    err, count = rt.cudaGetDeviceCount()
    # No driver or no GPU is an answer here, not an error: callers use it to decide to skip.
    if not _is_success(err):
        return 0
    return int(count)


def set_device(index: int) -> None:
    check(_rt().cudaSetDevice(index), f"cudaSetDevice({index})")


def get_device() -> int:
    return int(check(_rt().cudaGetDevice(), "cudaGetDevice"))


def device_info(index: int = 0) -> DeviceInfo:
    props = check(_rt().cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return DeviceInfo(
        index=index,
        name=str(name),
        compute_capability=f"{props.major}.{props.minor}",
        total_memory=int(props.totalGlobalMem),
    )


def mem_get_info() -> tuple[int, int]:
    """(free, total) bytes of the current device."""
    free, total = check(_rt().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free), int(total)


def synchronize() -> None:
    check(_rt().cudaDeviceSynchronize(), "cudaDeviceSynchronize")


# --- resources -------------------------------------------------------------------------------


class _Resource(abc.ABC):
    # A class default, so that close() and __del__ are safe when __init__ failed half way.
    _closed = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()

    @abc.abstractmethod
    def _release(self) -> None:
        """Free the underlying CUDA resource (called once, by close())."""

    @property
    def closed(self) -> bool:
        return self._closed

    def _live(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class Stream(_Resource):
    """A CUDA stream; non-blocking by default so it never serialises with the legacy default
    stream (which other libraries in the process, torch included, may use)."""

    def __init__(self, *, non_blocking: bool = True) -> None:
        rt = _rt()
        flags = rt.cudaStreamNonBlocking if non_blocking else rt.cudaStreamDefault
        self.handle = check(rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        self._closed = False

    @property
    def ptr(self) -> int:
        """The raw cudaStream_t, as TensorRT's execute_async_v3 takes it."""
        return int(self.handle)

    def synchronize(self) -> None:
        self._live()
        check(_rt().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def wait_event(self, event: Event) -> None:
        self._live()
        check(_rt().cudaStreamWaitEvent(self.handle, event.handle, 0), "cudaStreamWaitEvent")

    def _release(self) -> None:
        check(_rt().cudaStreamDestroy(self.handle), "cudaStreamDestroy")


class Event(_Resource):
    """A CUDA event. `blocking_sync` makes `synchronize()` sleep instead of spin: a few
    microseconds of latency for not burning a core per waiting thread."""

    def __init__(self, *, timing: bool = False, blocking_sync: bool = False) -> None:
        rt = _rt()
        flags = rt.cudaEventDefault
        if not timing:
            flags |= rt.cudaEventDisableTiming
        if blocking_sync:
            flags |= rt.cudaEventBlockingSync
        self.handle = check(rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")
        self.timing = timing
        self._closed = False

    def record(self, stream: Stream) -> None:
        self._live()
        check(_rt().cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    def synchronize(self) -> None:
        self._live()
        check(_rt().cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def query(self) -> bool:
        """True once all work before the recorded point has finished."""
        self._live()
        rt = _rt()
        (err,) = rt.cudaEventQuery(self.handle)
        if err == rt.cudaError_t.cudaErrorNotReady:
            return False
        check((err,), "cudaEventQuery")
        return True

    def elapsed_ms(self, since: Event) -> float:
        """Milliseconds from `since` to this event; both need timing=True."""
        self._live()
        return float(check(_rt().cudaEventElapsedTime(since.handle, self.handle), "cudaEventElapsedTime"))

    def _release(self) -> None:
        check(_rt().cudaEventDestroy(self.handle), "cudaEventDestroy")


def _shape_of(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)


class _HostView:
    """Exposes pinned memory to numpy; the array's base is this object, which holds the buffer,
    so a live array keeps the memory from being freed by garbage collection."""

    def __init__(self, owner: PinnedBuffer, nbytes: int) -> None:
        self._owner = owner
        self.__array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (owner.ptr, False),
            "version": 3,
        }


class PinnedBuffer(_Resource):
    """Page-locked host memory (cudaHostAlloc), seen through numpy. Async copies need it: from
    pageable memory cudaMemcpyAsync stages through a driver buffer and does not overlap.

    `array` and `view()` alias the pinned memory; they must not be used after `close()`.
    """

    def __init__(
        self, shape: int | tuple[int, ...], dtype: Any = np.float32, *, portable: bool = False
    ) -> None:
        rt = _rt()
        self.shape = _shape_of(shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        flags = rt.cudaHostAllocPortable if portable else rt.cudaHostAllocDefault
        # A zero-byte request returns a null pointer, which numpy and memcpy would choke on.
        self.ptr = int(check(rt.cudaHostAlloc(max(self.nbytes, 1), flags), "cudaHostAlloc"))
        self._closed = False

    @property
    def array(self) -> np.ndarray:
        return self.view(self.shape)

    def view(self, shape: int | tuple[int, ...], dtype: Any = None) -> np.ndarray:
        """The first prod(shape) elements as an array of `shape` (and `dtype`, default the buffer's)."""
        self._live()
        dt = self.dtype if dtype is None else np.dtype(dtype)
        dims = _shape_of(shape)
        nbytes = math.prod(dims) * dt.itemsize
        if nbytes > self.nbytes:
            raise ValueError(f"view {dims} {dt} needs {nbytes} bytes; the pinned buffer has {self.nbytes}")
        raw = np.asarray(_HostView(self, self.nbytes))
        view: np.ndarray = raw[:nbytes].view(dt).reshape(dims)
        return view

    def _release(self) -> None:
        check(_rt().cudaFreeHost(self.ptr), "cudaFreeHost")


class DeviceBuffer(_Resource):
    def __init__(self, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError(f"negative size {nbytes}")
        self.nbytes = int(nbytes)
        self.ptr = int(check(_rt().cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))
        self._closed = False

    def _release(self) -> None:
        check(_rt().cudaFree(self.ptr), "cudaFree")


HostLike = PinnedBuffer | int
DeviceLike = DeviceBuffer | int


def _resolve(buf: PinnedBuffer | DeviceBuffer | int, nbytes: int | None, role: str) -> tuple[int, int]:
    """(pointer, bytes to copy); checks the size against a buffer object, trusts a raw pointer."""
    if isinstance(buf, int):
        if nbytes is None:
            raise ValueError(f"{role} is a raw pointer: pass nbytes")
        return buf, nbytes
    buf._live()
    n = buf.nbytes if nbytes is None else nbytes
    if not 0 <= n <= buf.nbytes:
        raise ValueError(f"copy of {n} bytes does not fit the {role} {type(buf).__name__} of {buf.nbytes}")
    return buf.ptr, n


def _memcpy_async(dst: Any, src: Any, stream: Stream, nbytes: int | None, kind_name: str, what: str) -> None:
    if nbytes is None and not isinstance(dst, int) and not isinstance(src, int):
        nbytes = min(dst.nbytes, src.nbytes)
    d, n = _resolve(dst, nbytes, "destination")
    s, n = _resolve(src, n, "source")
    rt = _rt()
    check(
        rt.cudaMemcpyAsync(d, s, n, getattr(rt.cudaMemcpyKind, kind_name), stream.handle),
        f"cudaMemcpyAsync({what})",
    )


def memcpy_htod_async(dst: DeviceLike, src: HostLike, stream: Stream, nbytes: int | None = None) -> None:
    """Host (pinned) -> device on `stream`; nbytes defaults to the smaller buffer's size."""
    _memcpy_async(dst, src, stream, nbytes, "cudaMemcpyHostToDevice", "host->device")


def memcpy_dtoh_async(dst: HostLike, src: DeviceLike, stream: Stream, nbytes: int | None = None) -> None:
    """Device -> host (pinned) on `stream`; nbytes defaults to the smaller buffer's size."""
    _memcpy_async(dst, src, stream, nbytes, "cudaMemcpyDeviceToHost", "device->host")


def memcpy_dtod_async(dst: DeviceLike, src: DeviceLike, stream: Stream, nbytes: int | None = None) -> None:
    """Device -> device on `stream`; nbytes defaults to the smaller buffer's size."""
    _memcpy_async(dst, src, stream, nbytes, "cudaMemcpyDeviceToDevice", "device->device")


def memset_async(dst: DeviceLike, value: int, stream: Stream, nbytes: int | None = None) -> None:
    d, n = _resolve(dst, nbytes, "destination")
    check(_rt().cudaMemsetAsync(d, value, n, stream.handle), "cudaMemsetAsync")


class CudaGraph(_Resource):
    """Work enqueued on one stream, captured once and replayed with a single launch.

    Capture records pointers and sizes as they are, so a graph is only valid for the buffers and
    shapes it was captured with: the runner keeps one per (slot, input shape).
    """

    def __init__(self) -> None:
        self._graph: Any = None
        self._exec: Any = None
        self._closed = False

    @contextlib.contextmanager
    def capture(self, stream: Stream) -> Iterator[None]:
        self._live()
        if self._exec is not None:
            raise RuntimeError("this CudaGraph was already captured")
        rt = _rt()
        # Thread-local mode: other threads' unrelated CUDA calls (another slot's cudaMalloc, say)
        # neither break this capture nor get caught in it.
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(rt.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
        try:
            yield
        except BaseException:
            # Leave the stream usable: end the capture and drop whatever was recorded.
            err, graph = rt.cudaStreamEndCapture(stream.handle)
            if _is_success(err) and graph is not None and int(graph) != 0:
                rt.cudaGraphDestroy(graph)
            raise
        self._graph = check(rt.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        self._exec = check(rt.cudaGraphInstantiate(self._graph, 0), "cudaGraphInstantiate")

    @property
    def captured(self) -> bool:
        return self._exec is not None

    def launch(self, stream: Stream) -> None:
        self._live()
        if self._exec is None:
            raise RuntimeError("launch before capture")
        check(_rt().cudaGraphLaunch(self._exec, stream.handle), "cudaGraphLaunch")

    def _release(self) -> None:
        rt = _rt()
        if self._exec is not None:
            check(rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
        if self._graph is not None:
            check(rt.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
