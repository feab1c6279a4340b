"""The contracts between the pipelines and a model runtime.

Every runtime is a `Backend`: it takes a float32 NCHW batch already letterboxed to one input
shape, on the host, and returns the model's outputs as NumPy arrays, in `spec.output_names`
order; the host pipeline runs any of them. A runtime that can also take a batch already on its
GPU and return decoded candidates there is a `DeviceBackend` too, and says so through
`device_backend()`; the GPU pipeline (nvJPEG decode, GPU letterbox, batched NMS) runs any of
those. Neither knows images, options or gRPC, so adding a runtime touches neither the servicer
nor the batcher, and the pipeline is picked from what the runtime offers, never its name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from facedet_server.model.spec import ModelSpec

if TYPE_CHECKING:  # torch is only needed where a runtime runs on a GPU
    import torch


class Backend(Protocol):
    spec: ModelSpec
    name: str  # "onnxruntime", "torch", "tensorrt"
    device: str  # execution provider or device, e.g. "CPUExecutionProvider", "cuda:0"
    max_batch: int  # the most images one `run` call may carry
    model_sha256: str

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the model on an (N, 3, H, W) float32 batch, N <= max_batch."""
        ...

    def device_backend(self) -> DeviceBackend | None:
        """This runtime as a `DeviceBackend`, or None where it only takes host batches (a CPU
        runtime, or a model whose outputs still need decoding on the host)."""
        ...

    def close(self) -> None: ...


class DeviceBackend(Backend, Protocol):
    """A runtime fed from device memory: batch in and (N, K, 15) decoded candidates
    ([cx, cy, w, h, score, 10 landmark coordinates] in input pixels) out, both torch tensors on
    `torch_device`, the work queued on the calling thread's current stream."""

    @property
    def torch_device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype:
        """The dtype `forward` takes its batch in."""
        ...

    def stream(self) -> torch.cuda.Stream | None:
        """The calling thread's stream (None off CUDA); the pipeline runs each batch on it."""
        ...

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) batch in `dtype` on `torch_device`, N <= max_batch -> (N, K, 15)
        candidates on `torch_device`. Queued on the current stream, so call it inside
        `torch.cuda.stream(self.stream())`; the result is ready once that stream gets there."""
        ...

    def warm_up(self, shapes: list[tuple[int, int]]) -> None:
        """Prepare the calling thread for inputs of each (w, h), at every batch size this
        runtime distinguishes, so no request pays for it."""
        ...

    def device_settings(self) -> dict[str, object]:
        """How this runtime runs on the device, for the `gpu_pipeline` log line."""
        ...
