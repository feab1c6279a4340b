"""Our PyTorch YOLOv5-Face on CUDA: FP16, channels-last, one CUDA graph per (batch, shape) bucket.

The model decodes its heads inside forward(), so the output is (N, K, 15) candidates on the GPU
and only final faces cross back to the host (see facedet_server.pipeline.gpu): a `DeviceBackend`
(runtime.base). Each inference thread
gets its own CUDA stream and its own graphs, since a graph's static buffers must not be shared
by two batches in flight.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import structlog
import torch

from facedet_server.model.files import sha256_of
from facedet_server.model.spec import ModelSpec
from facedet_server.runtime.progress import StepProgress

log = structlog.get_logger("facedet.runtime")


def load_torch_model(model_path: Path) -> tuple[torch.nn.Module, ModelSpec]:
    """Our model with weights imported from an upstream ONNX export or training checkpoint."""
    from facedet_server.runtime.torch_model import load_inference_model

    module, spec = load_inference_model(model_path)
    return module, spec


def inductor_cache_dir(home: Path) -> Path:
    """Where inductor keeps what it compiled: $TORCHINDUCTOR_CACHE_DIR where the user set it,
    else `home`/inductor, put into the environment (inductor and its compile workers read it
    there). Importing torch._dynamo sets that variable to torch's own default
    (/tmp/torchinductor_$USER) as a side effect, so that value counts as unset: it would put the
    cache in /tmp, lost with the container or the machine, and every start would compile again."""
    value = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if value and os.path.abspath(value) != os.path.abspath(_torch_default_cache_dir()):
        return Path(value)
    path = home / "inductor"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def _torch_default_cache_dir() -> str:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # another torch layout: its default as torch 2.4-2.13 compute it
        import getpass
        import tempfile

        return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    return str(default_cache_dir())


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
        compile_mode: str = "off",
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
        self.compile_mode = compile_mode if self.torch_device.type == "cuda" else "off"
        # dynamo specialises a batch of 1, which would cost a second compilation: compiled, a
        # single image runs in a bucket of 2 (on the GPU, the same time).
        self.buckets = [b for b in batch_buckets(max_batch) if b > 1 or self.compile_mode == "off"] or [
            max_batch
        ]
        self._compiled_module = self._compiled() if self.compile_mode != "off" else self.module
        # Compiling takes tens of seconds, so only the shapes warmed up at start (the common
        # ones) run compiled; a shape first seen in traffic is captured from the eager module
        # (about a second) rather than stalling its batch for a compilation.
        self._compiled_shapes: set[tuple[int, int]] = set()
        # First starts compile for minutes: the log says what, and for how long, meanwhile.
        self._progress = StepProgress("compiling")
        self._local = _ThreadState()
        # One capture at a time: a capture must not see another thread's capture in progress.
        self._capture_lock = threading.Lock()

    def device_backend(self) -> TorchCudaBackend:
        """Always one: the module decodes its heads (on the CPU build too, for the tests)."""
        return self

    def device_settings(self) -> dict[str, object]:
        return {"buckets": self.buckets, "compile": self.compile_mode}

    def _compiled(self) -> torch.nn.Module:
        """The module through inductor, which fuses the activations, concats and channel
        shuffles that eager mode runs as separate kernels (about 2.4x on an H200). inductor's
        own CUDA graphs stay off: the per-bucket graphs below capture its kernels instead. The
        batch size is symbolic, so each input shape compiles once for all its buckets (symbolic
        height and width too would compile once in all, but measured at half the speed); the
        artifacts are cached on disk, so a restart skips most of the work."""
        import torch._dynamo

        from facedet_server.model.files import facedet_home

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)

        # The compiled kernels and graphs are kept on disk (inductor's FX graph and autograd
        # caches, and Triton's kernels under the same folder), so only a first start pays the
        # minutes of compiling; $TORCHINDUCTOR_CACHE_DIR, when the user set it, wins.
        cache = inductor_cache_dir(facedet_home())
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        with contextlib.suppress(AttributeError):  # older torch: no autograd cache
            inductor_config.autograd_cache = True  # type: ignore[attr-defined]
        warm = cache.is_dir() and any(cache.iterdir())
        log.info(
            "compile_cache", path=str(cache), state="reused" if warm else "empty: a first start compiles"
        )
        mode = "max-autotune-no-cudagraphs" if self.compile_mode == "max-autotune" else "default"
        compiled: torch.nn.Module = torch.compile(self.module, mode=mode, fullgraph=True)  # type: ignore[assignment]
        return compiled

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
        compiled = self.compile_mode != "off" and (w, h) in self._compiled_shapes
        runner = self._compiled_module if compiled else self.module
        with self._capture_lock:
            # Capture on a side stream (never the legacy default stream) in thread-local mode, so
            # other inference threads keep launching work while this thread captures.
            side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                # Warm-up lets cuDNN pick its kernels (and inductor compile, once) before
                # capture freezes them.
                if compiled:
                    torch._dynamo.maybe_mark_dynamic(static_in, 0)
                what = f"batch {bucket} at {w}x{h}"
                with (
                    self._progress.step(what, mode=self.compile_mode)
                    if compiled
                    else contextlib.nullcontext()
                ):
                    for _ in range(3):
                        runner(static_in)
            side.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                static_out = runner(static_in)
            side.synchronize()
        return graph, static_in, static_out

    def warm_up(self, shapes: list[tuple[int, int]]) -> None:
        """Capture this thread's graphs for every bucket at each (w, h), compiled when on."""
        self._compiled_shapes.update(shapes)
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
