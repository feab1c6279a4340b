"""Find a TensorRT Python module: the full `tensorrt`, or the lean runtime.

The full package (with the builder) cannot be installed on our machines; the lean runtime wheels
can, on the GPU one, and deserialize and run engines with the same runtime API. Their import name
has varied across wheels, so the candidates are tried in order. `FACEDET_TRT_MODULE` pins one.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata
from types import ModuleType

CANDIDATES = ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings")

_ENV = "FACEDET_TRT_MODULE"

_cached: ModuleType | None = None

# Distributions that may carry each module, to read a version from when the module has none.
_DISTRIBUTIONS = {
    "tensorrt": ("tensorrt", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"),
    "tensorrt_lean": ("tensorrt-lean", "tensorrt-lean-cu13-bindings", "tensorrt-lean-cu12-bindings"),
    "tensorrt_lean_bindings": ("tensorrt-lean-cu13-bindings", "tensorrt-lean-cu12-bindings", "tensorrt-lean"),
}


def load_tensorrt(candidates: tuple[str, ...] | None = None) -> ModuleType:
    """The first TensorRT module that imports and has a Runtime; ImportError listing every try."""
    global _cached  # noqa: PLW0603 (a process-wide cache of one import)
    use_cache = candidates is None
    if candidates is None:
        if _cached is not None:
            return _cached
        pinned = os.environ.get(_ENV, "").strip()
        candidates = (pinned,) if pinned else CANDIDATES
    failures: list[str] = []
    for name in candidates:
        try:
            module = importlib.import_module(name)
        # Not only ImportError: the PyPI `tensorrt` placeholder and broken CUDA libraries raise
        # other exceptions at import time, and the next candidate may still work.
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if not hasattr(module, "Runtime"):
            failures.append(f"{name}: imported but has no Runtime (not a TensorRT runtime module)")
            continue
        if use_cache:
            _cached = module
        return module
    raise ImportError(
        "no TensorRT runtime module could be imported ("
        + "; ".join(failures)
        + "). Install TensorRT, or on a CUDA 13 machine the lean runtime: "
        "pip install tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings"
    )


def is_lean(module: ModuleType) -> bool:
    return "lean" in module.__name__


def tensorrt_version(module: ModuleType) -> str:
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    base = module.__name__.split(".")[0]
    for dist in _DISTRIBUTIONS.get(base, ()):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"
