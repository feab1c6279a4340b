"""facedet_trt.cuda on a real GPU, without TensorRT: copies, ordering, graphs, errors, leaks."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

pytest.importorskip("cuda.bindings.runtime", reason="cuda-python (cuda.bindings) is not installed")

from facedet_trt import cuda

if cuda.device_count() == 0:
    pytest.skip("no CUDA GPU visible (cudaGetDeviceCount found none)", allow_module_level=True)

pytestmark = pytest.mark.gpu

MiB = 1 << 20


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def random_array(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return raw.astype(np.uint8).view(dtype).reshape(shape)


def test_device_info() -> None:
    info = cuda.device_info(0)
    assert info.name
    major, minor = info.compute_capability.split(".")
    assert int(major) >= 7 and minor.isdigit()
    free, total = cuda.mem_get_info()
    assert 0 < free <= total
    assert cuda.get_device() == 0


@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32", "float64", "int32", "int64"])
@pytest.mark.parametrize("count", [1, 7, 4096, MiB + 3])
def test_round_trip_is_byte_exact(dtype: str, count: int) -> None:
    data = random_array((count,), dtype, seed=count)
    with (
        cuda.Stream() as stream,
        cuda.Event() as done,
        cuda.PinnedBuffer(count, dtype) as src,
        cuda.PinnedBuffer(count, dtype) as dst,
        cuda.DeviceBuffer(src.nbytes) as dev,
    ):
        src.array[...] = data
        dst.array.view(np.uint8)[...] = 0x5A
        cuda.memcpy_htod_async(dev, src, stream)
        cuda.memcpy_dtoh_async(dst, dev, stream)
        done.record(stream)
        done.synchronize()
        assert done.query()
        assert dst.array.tobytes() == data.tobytes()


def test_partial_copies_and_views() -> None:
    with (
        cuda.Stream() as stream,
        cuda.PinnedBuffer((4, 3, 8, 8), np.float32) as src,
        cuda.PinnedBuffer((4, 3, 8, 8), np.float32) as dst,
        cuda.DeviceBuffer(src.nbytes) as dev,
    ):
        small = src.view((2, 3, 8, 8))
        small[...] = np.arange(small.size, dtype=np.float32).reshape(small.shape)
        dst.array[...] = -1
        cuda.memcpy_htod_async(dev, src, stream, small.nbytes)
        cuda.memcpy_dtoh_async(dst, dev, stream, small.nbytes)
        stream.synchronize()
        np.testing.assert_array_equal(dst.view((2, 3, 8, 8)), small)
        # Only the first half was copied; the rest is untouched.
        assert (dst.array[2:] == -1).all()
        with pytest.raises(ValueError, match="does not fit"):
            cuda.memcpy_htod_async(dev, src, stream, src.nbytes + 4)
        with pytest.raises(ValueError, match="pinned buffer has"):
            src.view((5, 3, 8, 8))


def test_events_order_work_across_streams() -> None:
    nbytes = 256 * MiB  # big enough that the memset is still running when stream b is reached
    with (
        cuda.Stream() as a,
        cuda.Stream() as b,
        cuda.Event() as written,
        cuda.DeviceBuffer(nbytes) as dev,
        cuda.PinnedBuffer(nbytes, np.uint8) as host,
    ):
        for value in (0x11, 0xAB, 0x3C):
            host.array[...] = 0
            cuda.memset_async(dev, value, a)
            written.record(a)
            b.wait_event(written)
            cuda.memcpy_dtoh_async(host, dev, b)
            b.synchronize()
            arr = host.array
            assert arr[0] == value and arr[-1] == value and (arr[:: 4 * MiB + 1] == value).all()


def test_timing_events() -> None:
    with (
        cuda.Stream() as s,
        cuda.Event(timing=True) as t0,
        cuda.Event(timing=True) as t1,
        cuda.DeviceBuffer(64 * MiB) as dev,
    ):
        t0.record(s)
        cuda.memset_async(dev, 1, s)
        t1.record(s)
        t1.synchronize()
        assert t1.elapsed_ms(t0) >= 0.0


def test_cuda_graph_replays_against_current_buffer_contents() -> None:
    n = 1 << 16
    with (
        cuda.Stream() as stream,
        cuda.PinnedBuffer(n, np.float32) as src,
        cuda.PinnedBuffer(n, np.float32) as dst,
        cuda.DeviceBuffer(src.nbytes) as d1,
        cuda.DeviceBuffer(src.nbytes) as d2,
        cuda.CudaGraph() as graph,
    ):
        src.array[...] = 0
        with graph.capture(stream):
            cuda.memcpy_htod_async(d1, src, stream)
            cuda.memcpy_dtod_async(d2, d1, stream)
            cuda.memcpy_dtoh_async(dst, d2, stream)
        assert graph.captured
        # Capture records, it does not run.
        for i in range(50):
            src.array[...] = np.float32(i) + np.arange(n, dtype=np.float32)
            graph.launch(stream)
            stream.synchronize()
            np.testing.assert_array_equal(dst.array, src.array)
        with pytest.raises(RuntimeError, match="already captured"), graph.capture(stream):
            pass


def test_failed_capture_leaves_the_stream_usable() -> None:
    with cuda.Stream() as stream, cuda.DeviceBuffer(1024) as dev, cuda.PinnedBuffer(1024, np.uint8) as host:
        graph = cuda.CudaGraph()
        with pytest.raises(KeyError), graph.capture(stream):
            cuda.memset_async(dev, 7, stream)
            raise KeyError("boom")
        # Synchronizing a capturing stream is illegal: the capture is invalidated, and reported.
        graph2 = cuda.CudaGraph()
        with pytest.raises(cuda.CudaError), graph2.capture(stream):
            stream.synchronize()
        graph.close()
        graph2.close()
        cuda.memset_async(dev, 9, stream)
        cuda.memcpy_dtoh_async(host, dev, stream)
        stream.synchronize()
        assert (host.array == 9).all()


def test_errors_are_cuda_errors_and_not_sticky() -> None:
    with pytest.raises(cuda.CudaError, match=r"cudaSetDevice.*cudaErrorInvalidDevice") as info:
        cuda.set_device(cuda.device_count() + 7)
    assert info.value.name == "cudaErrorInvalidDevice"
    with pytest.raises(cuda.CudaError, match=r"cudaGetDeviceProperties.*cudaErrorInvalidDevice"):
        cuda.device_info(999)
    with pytest.raises(cuda.CudaError, match=r"cudaMalloc.*cudaErrorMemoryAllocation"):
        cuda.DeviceBuffer(1 << 50)
    with cuda.Event(timing=False) as a, cuda.Event(timing=False) as b, cuda.Stream() as s:
        a.record(s)
        b.record(s)
        b.synchronize()
        with pytest.raises(cuda.CudaError, match="cudaEventElapsedTime"):
            b.elapsed_ms(a)
    cuda.set_device(0)
    # None of those broke the context.
    with cuda.Stream() as s, cuda.DeviceBuffer(16) as dev, cuda.PinnedBuffer(16, np.uint8) as host:
        cuda.memset_async(dev, 3, s)
        cuda.memcpy_dtoh_async(host, dev, s)
        s.synchronize()
        assert (host.array == 3).all()


def test_check_unpacks_results() -> None:
    from cuda.bindings import runtime as cudart

    assert cuda.check((cudart.cudaError_t.cudaSuccess,)) is None
    assert cuda.check((cudart.cudaError_t.cudaSuccess, 5)) == 5
    assert cuda.check((cudart.cudaError_t.cudaSuccess, 5, 6)) == (5, 6)
    with pytest.raises(cuda.CudaError, match=r"my call failed: cudaErrorInvalidValue \(1\)"):
        cuda.check((cudart.cudaError_t.cudaErrorInvalidValue,), "my call")


def test_close_is_idempotent_and_use_after_close_is_refused() -> None:
    stream = cuda.Stream()
    buf = cuda.PinnedBuffer(8, np.float32)
    dev = cuda.DeviceBuffer(32)
    for r in (stream, buf, dev):
        r.close()
        r.close()
        assert r.closed
    with pytest.raises(RuntimeError, match="closed"):
        stream.synchronize()
    with pytest.raises(RuntimeError, match="closed"):
        _ = buf.array
    with cuda.Stream() as s, pytest.raises(RuntimeError, match="closed"):
        cuda.memcpy_htod_async(dev, cuda.PinnedBuffer(8, np.float32), s)


def test_array_view_keeps_pinned_memory_alive() -> None:
    arr = cuda.PinnedBuffer(1024, np.float32).array  # the buffer object itself is dropped here
    gc.collect()
    arr[...] = 3.0
    assert float(arr.sum()) == 3.0 * 1024


@pytest.mark.slow
def test_no_leaks_over_thousands_of_allocations() -> None:
    def cycle(i: int) -> None:
        with (
            cuda.Stream() as s,
            cuda.Event(blocking_sync=True) as e,
            cuda.PinnedBuffer(256 * 1024, np.float32) as host,
            cuda.DeviceBuffer(4 * MiB) as dev,
        ):
            host.array[:4] = i
            cuda.memcpy_htod_async(dev, host, s)
            cuda.memcpy_dtoh_async(host, dev, s)
            e.record(s)
            e.synchronize()
            if i % 4 == 0:
                with cuda.CudaGraph() as g:
                    with g.capture(s):
                        cuda.memset_async(dev, 0, s, 1024)
                    g.launch(s)
                    s.synchronize()

    for i in range(50):  # warm up the driver's own pools before taking the baseline
        cycle(i)
    gc.collect()
    cuda.synchronize()
    free0, _ = cuda.mem_get_info()
    rss0 = rss_bytes()
    for i in range(3000):
        cycle(i)
    gc.collect()
    cuda.synchronize()
    free1, _ = cuda.mem_get_info()
    rss1 = rss_bytes()
    # 3000 cycles of 4 MiB device + 1 MiB pinned: a leak would be gigabytes, noise is a few MiB.
    assert free0 - free1 < 64 * MiB, f"device memory fell by {(free0 - free1) / MiB:.1f} MiB"
    assert rss1 - rss0 < 64 * MiB, f"host RSS grew by {(rss1 - rss0) / MiB:.1f} MiB"
