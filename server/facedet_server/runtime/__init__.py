"""Model runtimes behind one interface (`Backend`): `choose_backend` picks one for --backend,
`load_backend` loads it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from facedet_server.runtime.base import Backend


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def choose_backend(requested: str, model_path: Path) -> tuple[str, str]:
    """(backend, reason) for --backend; `auto` prefers TensorRT, then torch-CUDA, then ORT CPU."""
    if requested != "auto":
        return requested, "requested"
    if model_path.suffix in (".plan", ".engine"):
        return "tensorrt", f"{model_path.name} is a TensorRT engine"
    if model_path.suffix in (".onnx", ".param") and _cuda_available():  # .param: an ncnn model
        return "torch", "a CUDA GPU and torch are present"
    return "onnxruntime", "no TensorRT engine given and no CUDA GPU with torch; running on the CPU"


def load_backend(
    name: str,
    model_path: Path,
    *,
    max_batch: int,
    intra_op_threads: int = 0,
    inter_op_threads: int = 1,
    device: str = "cuda:0",
    compile_mode: str = "off",
) -> Backend:
    """`name` is a backend `choose_backend` returned: chosen first, since where the model runs
    decides the automatic settings (`max_batch` among them) it is loaded with."""
    if name == "onnxruntime":
        from facedet_server.runtime.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, intra_op_threads, inter_op_threads, max_batch)
    if name == "torch":
        from facedet_server.runtime.torch_cuda import TorchCudaBackend

        backend: Backend = TorchCudaBackend(
            model_path, max_batch=max_batch, device=device, compile_mode=compile_mode
        )
        return backend
    if name == "tensorrt":
        try:
            from facedet_server.runtime.tensorrt import TensorRTBackend
        except ImportError as exc:
            raise RuntimeError(f"the tensorrt backend needs TensorRT and cuda-python: {exc}") from None
        trt_backend: Backend = TensorRTBackend(model_path, max_batch=max_batch, device=device)
        return trt_backend
    raise ValueError(f"unknown backend {name!r}")
