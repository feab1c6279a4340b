"""The contract between the pipeline and a model runtime.

A backend takes a float32 NCHW batch already letterboxed to one input shape and returns the
model's outputs as NumPy arrays, in `spec.output_names` order. It knows nothing of images,
options or gRPC, so adding TensorRT or torch-CUDA touches neither the servicer nor the batcher.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from facedet_server.model.spec import ModelSpec


class Backend(Protocol):
    spec: ModelSpec
    name: str  # "onnxruntime", "torch", "tensorrt"
    device: str  # execution provider or device, e.g. "CPUExecutionProvider", "cuda:0"
    max_batch: int  # the most images one `run` call may carry
    model_sha256: str

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the model on an (N, 3, H, W) float32 batch, N <= max_batch."""
        ...

    def close(self) -> None: ...
