"""The server's runtime on a TensorRT engine (see facedet_server.runtime.base).

Host batches (`run`) go through facedet_trt's pooled runner. A plan whose model spec says its
output is decoded candidates is a `DeviceBackend` too: `forward` hands TensorRT the device
pointers of torch tensors and queues the run on the calling thread's torch stream, so nvJPEG
decode, the GPU letterbox and batched NMS feed it exactly as they feed our PyTorch network.
A plan of the upstream fixed heads keeps the host path (its heads decode on the CPU).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from facedet_trt.plan import Engine, EngineError
from facedet_trt.runner import TensorRTRunner
from facedet_trt.sidecar import EngineSidecar

from facedet_server.model.spec import METADATA_KEY, ModelSpec

if TYPE_CHECKING:  # torch only where the plan runs on the device path
    import torch

Shape = tuple[int, ...]


def spec_from_sidecar(sidecar: EngineSidecar) -> ModelSpec:
    # from_metadata already turns JSON lists back into the spec's tuples.
    spec = ModelSpec.from_metadata({METADATA_KEY: json.dumps(sidecar.model_spec)})
    if spec is None:  # pragma: no cover - the key is always there
        raise EngineError("sidecar has no model spec")
    return spec


def parse_device(device: str | int) -> int:
    """'cuda:1' / 'cuda' / 1 -> 1 / 0 / 1."""
    if isinstance(device, int):
        return device
    text = device.strip().lower()
    if text in ("cuda", "gpu"):
        return 0
    for prefix in ("cuda:", "gpu:"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            return int(text[len(prefix) :])
    raise ValueError(f"TensorRT runs on a CUDA device such as 'cuda:0', not {device!r}")


@dataclass
class _DeviceContext:
    """One inference thread's execution context: a context holds shapes and addresses between
    calls, so two threads must never share one."""

    context: Any
    profile: int = 0
    input_shape: Shape | None = None
    output_shapes: dict[str, Shape] = field(default_factory=dict)


class _ThreadState(threading.local):
    context: _DeviceContext | None = None
    stream: torch.cuda.Stream | None = None


class TensorRTBackend:
    name = "tensorrt"

    def __init__(
        self,
        engine_path: Path | str,
        *,
        max_batch: int = 8,
        device: str | int = "cuda:0",
        num_streams: int = 2,
        cuda_graphs: bool = False,
        engine: Engine | None = None,
    ) -> None:
        index = parse_device(device)
        self._engine = engine if engine is not None else Engine.load(Path(engine_path), device=index)
        self._num_streams, self._cuda_graphs = num_streams, cuda_graphs
        self._runner: TensorRTRunner | None = None
        self._runner_lock = threading.Lock()
        try:
            sidecar = self._engine.sidecar
            spec = spec_from_sidecar(sidecar)
            self.spec = spec
            self._decoded = spec.output_kind == "decoded"
            if self._decoded:
                self._check_decoded_outputs()
            else:
                # Host batches are all this plan takes: fail at load, not at the first request.
                self._runner = self._make_runner()
        except BaseException:
            if engine is None:
                self._engine.close()
            raise
        profiles = self._engine.profiles
        self._min_batch = min(p.min[0] for p in profiles)
        # The pipeline splits larger groups into chunks of this size.
        self.max_batch = max(1, min(max_batch, max(p.max[0] for p in profiles)))
        self.device = f"cuda:{index}"
        # The ONNX model the engine was built from identifies the model; the plan is a build of it.
        self.model_sha256 = sidecar.onnx_sha256
        self._local = _ThreadState()
        self._contexts: list[_DeviceContext] = []  # every thread's, to drop before the engine
        self._contexts_lock = threading.Lock()

    def _make_runner(self) -> TensorRTRunner:
        return TensorRTRunner(
            self._engine,
            self._num_streams,
            output_names=self.spec.output_names,
            cuda_graphs=self._cuda_graphs,
        )

    def _check_decoded_outputs(self) -> None:
        engine_outputs = [t.name for t in self._engine.outputs]
        if len(self.spec.output_names) != 1 or list(self.spec.output_names) != engine_outputs:
            raise EngineError(
                f"engine {self._engine.name}: a decoded model has one output, its candidates; the spec "
                f"names {list(self.spec.output_names)} and the engine has {engine_outputs}"
            )

    @property
    def runner(self) -> TensorRTRunner:
        """The pooled host-batch runner; a decoded plan makes it on first use, since the GPU
        pipeline never needs its pinned and device buffers."""
        with self._runner_lock:
            if self._runner is None:
                self._runner = self._make_runner()
            return self._runner

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        n = batch.shape[0]
        if n > self.max_batch:
            raise ValueError(f"batch of {n} exceeds max_batch {self.max_batch}")
        if n >= self._min_batch:
            return self.runner.run(batch)
        # An engine whose profiles start above n: pad with copies of the last image, drop the extra.
        pad = np.concatenate([batch, np.repeat(batch[-1:], self._min_batch - n, axis=0)])
        return [out[:n] for out in self.runner.run(pad)]

    # ---- the DeviceBackend side (runtime.base) ----

    def device_backend(self) -> TensorRTBackend | None:
        return self if self._decoded else None

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    @property
    def dtype(self) -> torch.dtype:
        return _torch_dtype(self._engine.input.dtype)

    def stream(self) -> torch.cuda.Stream:
        """This thread's CUDA stream (created on first use)."""
        import torch

        if self._local.stream is None:
            self._local.stream = torch.cuda.Stream(self.torch_device)  # type: ignore[no-untyped-call]
        return self._local.stream

    def _thread_context(self) -> _DeviceContext:
        state = self._local.context
        if state is None:
            state = _DeviceContext(self._engine.create_context())
            with self._contexts_lock:
                self._contexts.append(state)
            self._local.context = state
        return state

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in `dtype` on the device -> (N, K, 15) candidates on the device, queued
        on the current stream: TensorRT reads `batch` and writes a fresh tensor in that stream's
        order, so torch's stream-ordered allocator may reuse either once the caller drops it."""
        import torch

        n = int(batch.shape[0])
        if n > self.max_batch:
            raise ValueError(f"batch of {n} exceeds max_batch {self.max_batch}")
        engine = self._engine
        with torch.cuda.device(self.torch_device):
            stream = torch.cuda.current_stream(self.torch_device).cuda_stream
            if n < self._min_batch:  # profiles that start above n: pad with the last image
                batch = torch.cat([batch, batch[-1:].expand(self._min_batch - n, -1, -1, -1)])
            batch = batch.to(self.dtype).contiguous()
            shape: Shape = tuple(int(d) for d in batch.shape)
            profile = engine.profile_for(shape)
            state = self._thread_context()
            if state.profile != profile:
                engine.select_profile(state.context, profile, stream)
                state.profile, state.input_shape = profile, None
            if state.input_shape != shape:
                state.output_shapes = engine.set_input_shape(state.context, shape)
                state.input_shape = shape
            outputs = {
                info.name: torch.empty(
                    state.output_shapes[info.name], dtype=_torch_dtype(info.dtype), device=self.torch_device
                )
                for info in engine.outputs
            }
            addresses = {engine.input.name: batch.data_ptr()}
            addresses.update((name, out.data_ptr()) for name, out in outputs.items())
            engine.execute(state.context, addresses, stream)
        return outputs[self.spec.output_names[0]][:n]

    def warm_up(self, shapes: list[tuple[int, int]]) -> None:
        """One run per (w, h) the engine admits, at the largest batch: TensorRT does its lazy
        per-context and per-shape set-up on a context's first run at a shape."""
        import torch

        stream = self.stream()
        with torch.cuda.stream(stream):
            for w, h in shapes:
                shape = (self.max_batch, 3, h, w)
                try:
                    self._engine.profile_for(shape)
                except ValueError:  # outside every profile: no request can run it either
                    continue
                self.forward(torch.zeros(shape, dtype=self.dtype, device=self.torch_device))
            stream.synchronize()

    def device_settings(self) -> dict[str, object]:
        return {"profiles": [f"{p.name}: {p.min}..{p.max}" for p in self._engine.profiles]}

    def close(self) -> None:
        with self._contexts_lock:
            contexts, self._contexts = self._contexts, []
        for state in contexts:  # contexts go before the engine that made them
            state.context = None
        self._local = _ThreadState()
        if self._runner is not None:
            self._runner.close()
        self._engine.close()


def _torch_dtype(numpy_name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, np.dtype(numpy_name).name, None)
    if not isinstance(dtype, torch.dtype):
        raise EngineError(f"tensor dtype {numpy_name} has no torch equivalent")
    return dtype
