"""facedet's raw TensorRT runtime: engine loading, CUDA plumbing and a pooled runner.

Only `sidecar` is imported eagerly: it is pure Python, so the converter and the CPU tests can use
it on machines without CUDA or TensorRT. The CUDA and TensorRT modules are imported on demand.
"""

from facedet_trt.sidecar import (
    SCHEMA_VERSION,
    EngineMismatch,
    EngineSidecar,
    Profile,
    SidecarError,
    check_compatible,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

__all__ = [
    "SCHEMA_VERSION",
    "EngineMismatch",
    "EngineSidecar",
    "Profile",
    "SidecarError",
    "check_compatible",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]
