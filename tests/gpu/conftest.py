"""Fixtures of the GPU tests that run the torch-CUDA backend (test_torch_backend, test_engine_gpu,
test_jpeg_decoders). torch is imported inside them, so tests/gpu still collects (and skips) on a
machine without it. The CUDA and TensorRT runtime tests need none of these: trt_runtime/
gpu_tests.sh runs them with --noconftest, so they must not come to depend on this file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from facedet_test_support import MODEL, Server, ServerFactory

if TYPE_CHECKING:
    from facedet_server.runtime.torch_cuda import TorchCudaBackend


@pytest.fixture(scope="module")
def torch_backend() -> TorchCudaBackend:
    """The eager torch-CUDA backend on the real model, batches up to 8."""
    from facedet_server.runtime.torch_cuda import TorchCudaBackend

    return TorchCudaBackend(MODEL, max_batch=8)


@pytest.fixture
def start_torch_server(start_server: ServerFactory) -> ServerFactory:
    """start_torch_server(*flags) -> a started `facedet serve --backend torch *flags` on TCP,
    stopped after the test. It may take 300 s to serve: the default --compile compiles three
    shapes first on a cold cache."""

    def start(*flags: str) -> Server:
        # One process unless a test asks for more: on a GPU the automatic --processes starts
        # front ends and an engine, and these tests measure the one process's pid, log and memory.
        one = [] if "--processes" in flags else ["--processes", "1"]
        server = start_server("--backend", "torch", *one, *flags, unix=False, start=False)
        server.start(timeout=300)
        return server

    return start
