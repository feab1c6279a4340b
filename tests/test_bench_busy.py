"""The pure parts of the GPU profiling benchmark (`facedet_bench.gpu_busy`): the busy
share of overlapping GPU intervals, and kernel names grouped by stem."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="the GPU benchmarks import PyTorch (make test installs the CPU build)")

from facedet_bench.gpu_busy import busy_fraction, gpu_events, kernel_stem


def test_busy_fraction_counts_overlaps_once_and_gaps_not_at_all() -> None:
    # Two streams overlapping (0-10, 5-12), a gap, then one kernel (20-25) inside the span 0-25.
    busy, span = busy_fraction([(20.0, 25.0), (0.0, 10.0), (5.0, 12.0)])
    assert (busy, span) == (17.0, 25.0)
    assert busy_fraction([(0.0, 10.0), (2.0, 3.0)]) == (10.0, 10.0)  # nested
    assert busy_fraction([]) == (0.0, 0.0)


def test_kernel_stem_drops_templates_and_parameters() -> None:
    name = (
        "void at::native::(anonymous namespace)::reduce_kernel<512, 1, at::native::ReduceOp<float>>"
        "(at::native::ReduceOp<float, unsigned int, 4>)"
    )
    assert kernel_stem(name) == "at::native::reduce_kernel"
    assert kernel_stem("triton_poi_fused_cat_hardswish_7") == "triton_poi"
    assert kernel_stem("triton_red_fused_sum_2") == "triton_red"


def test_gpu_events_keeps_only_device_activity() -> None:
    trace = {
        "traceEvents": [
            {"ph": "X", "cat": "kernel", "name": "k", "ts": 1.0, "dur": 2.0},
            {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": 4.0, "dur": 1.0},
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 0.5, "dur": 0.2},
            {"ph": "i", "cat": "kernel", "name": "marker", "ts": 9.0},
        ]
    }
    assert [e["name"] for e in gpu_events(trace)] == ["k", "Memcpy HtoD"]
