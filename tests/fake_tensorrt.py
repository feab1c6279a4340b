"""A stand-in for the TensorRT Python module, for tests: TensorRT's builder installs nowhere we run,
so no real plan can be made, yet the loader's checks and the runner's CUDA work need exercising.

`fake_tensorrt()` returns a module with the runtime API the package uses (Runtime,
deserialize_cuda_engine, the engine's tensor queries, execution contexts). Its "plans" are JSON
made by `fake_plan`. Loading needs no GPU. Its execution contexts do real CUDA work on the stream
they are given, with cuda.bindings, so the runner's copies, events, graphs and pool are tested on
the GPU exactly as with TensorRT:

- an output of kind "copy" is the input, copied device to device;
- an output of kind "head" is (N, k): the first k input values of each image, a strided 2-D copy,
  so a batch's images must each land in their own row; with "width": w it is (N, k, w), the first
  k * w values (w=15 plays a decoded model's (N, K, 15) candidates).

Plain enqueued copies, so CUDA graphs can capture them like TensorRT's kernels.
"""

from __future__ import annotations

import enum
import json
import math
import threading
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from facedet_trt.sidecar import EngineSidecar, Profile

MAGIC = b"FAKETRT1"

Shape = tuple[int, ...]


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT8 = "int8"
    UINT8 = "uint8"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"
    BF16 = "bfloat16"


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class HardwareCompatibilityLevel(enum.Enum):
    NONE = 0
    AMPERE_PLUS = 1
    SAME_COMPUTE_CAPABILITY = 2


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = _Severity

    def log(self, severity: Any, msg: str) -> None:
        pass


class Logger(ILogger):
    WARNING = _Severity.WARNING

    def __init__(self, min_severity: Any = _Severity.WARNING) -> None:
        self.min_severity = min_severity


def fake_plan(
    *,
    input_name: str = "data",
    input_dtype: str = "float32",
    profiles: list[tuple[Shape, Shape, Shape]] | None = None,
    static_shape: Shape | None = None,
    outputs: dict[str, dict[str, Any]] | None = None,
    hardware_compatible: bool = False,
) -> bytes:
    """Bytes that the fake runtime deserializes. `outputs` maps a name to {"kind": "copy"} or
    {"kind": "head", "k": 8}; `static_shape` makes a static engine instead of profiles."""
    if outputs is None:
        outputs = {"copy": {"kind": "copy"}, "head": {"kind": "head", "k": 8}}
    if static_shape is None and profiles is None:
        profiles = [((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 64, 64))]
    desc = {
        "input_name": input_name,
        "input_dtype": input_dtype,
        "profiles": [[list(s) for s in p] for p in (profiles or [])],
        "static_shape": list(static_shape) if static_shape is not None else None,
        "outputs": outputs,
        "hardware_compatible": hardware_compatible,
    }
    return MAGIC + json.dumps(desc).encode()


@dataclass
class Calls:
    """What the contexts of one engine were asked to do, for tests to assert on."""

    execute: int = 0
    set_input_shape: int = 0
    set_profile: int = 0
    streams: list[int] = field(default_factory=list)  # the stream handle of each execute
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bump(self, what: str) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)


class Runtime:
    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, plan: bytes) -> ICudaEngine | None:
        data = bytes(plan)
        if not data.startswith(MAGIC):
            self.logger.log(
                _Severity.ERROR,
                "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (magic tag does not match)",
            )
            return None
        try:
            desc = json.loads(data[len(MAGIC) :])
        except ValueError as exc:
            self.logger.log(_Severity.ERROR, f"IRuntime::deserializeCudaEngine: truncated plan ({exc})")
            return None
        return ICudaEngine(desc, self.logger)


class ICudaEngine:
    def __init__(self, desc: dict[str, Any], logger: Any) -> None:
        self.desc = desc
        self.logger = logger
        self.input_name: str = desc["input_name"]
        self.input_dtype = np.dtype(desc["input_dtype"])
        self.outputs: dict[str, dict[str, Any]] = desc["outputs"]
        static = desc["static_shape"]
        self.static_shape: Shape | None = tuple(static) if static is not None else None
        self.profiles = [tuple(tuple(s) for s in p) for p in desc["profiles"]]
        self.names: list[str] = [self.input_name, *self.outputs]
        self.calls = Calls()
        self.hardware_compatibility_level = (
            HardwareCompatibilityLevel.AMPERE_PLUS
            if desc.get("hardware_compatible")
            else HardwareCompatibilityLevel.NONE
        )
        self.fail_execute = False
        self.contexts: list[IExecutionContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    @property
    def num_optimization_profiles(self) -> int:
        return max(1, len(self.profiles))

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.input_name else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self.input_dtype.name)

    def get_tensor_shape(self, name: str) -> Shape:
        if name == self.input_name:
            return self.static_shape if self.static_shape is not None else (-1, 3, -1, -1)
        if self.static_shape is not None:
            return self.output_shape(name, self.static_shape)
        return self.output_shape(name, (-1, 3, -1, -1))

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[Shape]:
        return list(self.profiles[profile])

    def output_shape(self, name: str, input_shape: Shape) -> Shape:
        spec = self.outputs[name]
        if spec["kind"] == "copy":
            return input_shape
        if "width" in spec:
            return (input_shape[0], int(spec["k"]), int(spec["width"]))
        return (input_shape[0], int(spec["k"]))

    def create_execution_context(self) -> IExecutionContext:
        context = IExecutionContext(self)
        self.contexts.append(context)
        return context


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.profile = 0
        self.shape: Shape | None = engine.static_shape
        self.addresses: dict[str, int] = {}

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.engine.calls.bump("set_profile")
        if not 0 <= index < self.engine.num_optimization_profiles:
            return False
        self.profile = index
        self.shape = self.engine.static_shape
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        self.engine.calls.bump("set_input_shape")
        dims = tuple(int(d) for d in shape)
        if name != self.engine.input_name:
            return False
        if self.engine.static_shape is not None:
            ok = dims == self.engine.static_shape
        else:
            lo, _, hi = self.engine.profiles[self.profile]
            ok = len(dims) == 4 and all(a <= d <= b for a, d, b in zip(lo, dims, hi, strict=True))
        if not ok:
            self.engine.logger.log(_Severity.ERROR, f"setInputShape: {dims} is outside the profile")
            return False
        self.shape = dims
        return True

    def get_tensor_shape(self, name: str) -> Shape:
        if name == self.engine.input_name:
            return self.shape if self.shape is not None else (-1, 3, -1, -1)
        if self.shape is None:
            return self.engine.output_shape(name, (-1, 3, -1, -1))
        return self.engine.output_shape(name, self.shape)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.engine.names:
            return False
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        from cuda.bindings import runtime as cudart
        from facedet_trt.cuda import check

        engine = self.engine
        engine.calls.bump("execute")
        with engine.calls.lock:
            engine.calls.streams.append(int(stream_handle))
        if engine.fail_execute or self.shape is None:
            engine.logger.log(_Severity.ERROR, "enqueueV3: injected failure")
            return False
        src = self.addresses[engine.input_name]
        itemsize = engine.input_dtype.itemsize
        n = self.shape[0]
        per_image = math.prod(self.shape[1:]) * itemsize
        d2d = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        for name, spec in engine.outputs.items():
            dst = self.addresses[name]
            if spec["kind"] == "copy":
                check(cudart.cudaMemcpyAsync(dst, src, n * per_image, d2d, stream_handle), "fake copy")
            else:
                row = int(spec["k"]) * int(spec.get("width", 1)) * itemsize
                check(
                    cudart.cudaMemcpy2DAsync(dst, row, src, per_image, row, n, d2d, stream_handle),
                    "fake head",
                )
        return True


def fake_tensorrt(version: str = "10.3.0", name: str = "fake_tensorrt") -> types.ModuleType:
    """A module object shaped like `tensorrt` (name it "..._lean" to play the lean runtime)."""
    module = types.ModuleType(name)
    module.__version__ = version  # type: ignore[attr-defined]
    for obj in (
        DataType,
        TensorIOMode,
        HardwareCompatibilityLevel,
        ILogger,
        Logger,
        Runtime,
        ICudaEngine,
        IExecutionContext,
    ):
        setattr(module, obj.__name__, obj)
    return module


def sidecar_for(
    plan: bytes,
    *,
    tensorrt_version: str = "10.3.0",
    gpu_name: str = "NVIDIA H100 80GB HBM3",
    compute_capability: str = "9.0",
    version_compatible: bool = False,
    model_spec: dict[str, Any] | None = None,
) -> EngineSidecar:
    """The sidecar the converter would write beside a fake plan."""
    desc = json.loads(plan[len(MAGIC) :])
    outputs = desc["outputs"]
    if desc["static_shape"] is not None:
        shape = tuple(desc["static_shape"])
        profiles = [Profile("static", shape, shape, shape)]
    else:
        profiles = [Profile(f"p{i}", *(tuple(s) for s in p)) for i, p in enumerate(desc["profiles"])]
    if model_spec is None:
        model_spec = {
            "name": "fake",
            "strides": [8],
            "anchors": [[[4.0, 5.0]]],
            "input_name": desc["input_name"],
            "output_names": list(outputs),
            "output_kind": "raw_heads",
            "batch_size": None,
            "input_height": None,
            "input_width": None,
        }
    dtype = np.dtype(desc["input_dtype"]).name
    return EngineSidecar(
        model_spec=model_spec,
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        profiles=profiles,
        precision="fp32",
        version_compatible=version_compatible,
        onnx_sha256="f" * 64,
        created="2025-01-01T00:00:00+00:00",
        inputs={desc["input_name"]: dtype},
        outputs=dict.fromkeys(outputs, dtype),
        hardware_compatible=bool(desc.get("hardware_compatible")),
    )
