"""Our PyTorch YOLOv5-Face on CUDA: FP16, channels-last, one CUDA graph per (batch, shape) bucket.

The model decodes its heads inside forward(), so the output is (N, K, 15) candidates on the GPU
and only final faces cross back to the host (see facedet_server.gpu). Each inference thread
gets its own CUDA stream and its own graphs, since a graph's static buffers must not be shared
by two batches in flight.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from facedet_server.model_spec import ModelSpec
from facedet_server.modelfiles import sha256_of


def load_torch_model(model_path: Path) -> tuple[torch.nn.Module, ModelSpec]:
    """Our model with weights imported from an upstream ONNX export or training checkpoint."""
    from facedet_converter.loading import load_inference_model

    module, spec = load_inference_model(model_path)
    return module, spec


Graph = tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]  # graph, static input, static output

# Dynamic shapes give up to ~40 input shapes per orientation; keeping every (bucket, shape)
# graph would hold gigabytes of static buffers, so each thread keeps the most recent ones.
MAX_GRAPHS_PER_THREAD = 32


class _ThreadState(threading.local):
    stream: torch.cuda.Stream | None = None
    graphs: OrderedDict[tuple[int, int, int], Graph]

    def __init__(self) -> None:
        self.graphs = OrderedDict()


def batch_buckets(max_batch: int) -> list[int]:
    """Graph batch sizes: powers of two up to max_batch, and max_batch itself. A batch runs in
    the smallest bucket that holds it, so at most half a bucket is padding."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


class TorchCudaBackend:
    name = "torch"

    def __init__(
        self,
        model_path: Path,
        max_batch: int = 32,
        device: str = "cuda:0",
        fp16: bool = True,
        cuda_graphs: bool = True,
        module: torch.nn.Module | None = None,
        spec: ModelSpec | None = None,
    ) -> None:
        if module is None or spec is None:
            module, spec = load_torch_model(model_path)
        self.device = device
        self.torch_device = torch.device(device)
        self.dtype = torch.float16 if fp16 and self.torch_device.type == "cuda" else torch.float32
        self.module = module.to(self.torch_device, self.dtype).eval()
        if self.torch_device.type == "cuda":
            self.module = self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # The module decodes internally and accepts any batch and any multiple-of-32 shape.
        self.spec = replace(spec, output_kind="decoded", input_height=None, input_width=None, batch_size=None)
        self.max_batch = max_batch
        self.model_sha256 = sha256_of(model_path) if model_path.is_file() else ""
        self.cuda_graphs = cuda_graphs and self.torch_device.type == "cuda"
        self.buckets = batch_buckets(max_batch)
        self._local = _ThreadState()
        # One capture at a time: a capture must not see another thread's capture in progress.
        self._capture_lock = threading.Lock()

    def stream(self) -> torch.cuda.Stream | None:
        """This thread's CUDA stream (created on first use)."""
        if self.torch_device.type != "cuda":
            return None
        if self._local.stream is None:
            self._local.stream = torch.cuda.Stream(self.torch_device)  # type: ignore[no-untyped-call]
        return self._local.stream

    def bucket_for(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) tensor on the device in self.dtype -> (N, K, 15) candidates. Must run
        on this thread's stream (`with torch.cuda.stream(backend.stream())`)."""
        n, _, h, w = batch.shape
        if not self.cuda_graphs:
            out: torch.Tensor = self.module(batch.contiguous(memory_format=torch.channels_last))
            return out
        bucket = self.bucket_for(n)
        key = (bucket, h, w)
        graphs = self._local.graphs
        if key in graphs:
            graphs.move_to_end(key)
        else:
            if len(graphs) >= MAX_GRAPHS_PER_THREAD:
                graphs.popitem(last=False)
            graphs[key] = self._capture(bucket, h, w)
        graph, static_in, static_out = graphs[key]
        static_in[:n].copy_(batch)
        graph.replay()  # launches on the current stream, after the copy above
        return static_out[:n]

    def _capture(self, bucket: int, h: int, w: int) -> Graph:
        device = self.torch_device
        static_in = torch.zeros((bucket, 3, h, w), dtype=self.dtype, device=device)
        static_in = static_in.contiguous(memory_format=torch.channels_last)
        with self._capture_lock:
            # Capture on a side stream (never the legacy default stream) in thread-local mode, so
            # other inference threads keep launching work while this thread captures.
            side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                # Warm-up lets cuDNN pick its kernels before capture freezes them.
                for _ in range(3):
                    self.module(static_in)
            side.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                static_out = self.module(static_in)
            side.synchronize()
        return graph, static_in, static_out

    def warm_up(self, shapes: list[tuple[int, int]]) -> None:
        """Capture this thread's graphs for every bucket at each (w, h)."""
        stream = self.stream()
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for w, h in shapes:
                for bucket in self.buckets:
                    self.forward(torch.zeros((bucket, 3, h, w), dtype=self.dtype, device=self.torch_device))
            if stream is not None:
                stream.synchronize()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The Backend protocol: host batch in, host candidates out (used off the GPU fast path)."""
        stream = self.stream()
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            tensor = torch.from_numpy(batch).to(self.torch_device, self.dtype, non_blocking=True)
            out = self.forward(tensor).float().cpu().numpy()
        return [out]

    def close(self) -> None:
        self._local = _ThreadState()
        del self.module
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()
