"""Load a TensorRT plan and check it against its sidecar before anything runs on it.

Order matters: the sidecar is checked against this machine (GPU, compute capability, TensorRT
version) before the plan is deserialized, because TensorRT given a foreign plan fails with an
internal error at best. After deserialization the engine's own I/O and profiles are compared with
the sidecar, so a plan and sidecar that do not belong together are refused too.

The TensorRT calls stay thin; everything that can be checked without TensorRT is plain Python.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from facedet_trt.sidecar import EngineSidecar, Profile, check_compatible, read_sidecar
from facedet_trt.trt_module import is_lean, load_tensorrt, tensorrt_version

log = logging.getLogger("facedet.trt")


class EngineError(RuntimeError):
    """The plan could not be loaded, does not match its sidecar, or TensorRT refused a call."""


# TensorRT DataType names -> numpy. BF16 and FP8 have no numpy dtype, and our models keep float32
# or float16 I/O even when the layers inside run lower, so those are refused as I/O types.
_TRT_TO_NUMPY = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def normalize_dtype(name: str) -> str:
    """A dtype name as numpy spells it, from numpy ("float32") or TensorRT ("FLOAT", "DataType.HALF")."""
    key = str(name).rsplit(".", 1)[-1].strip()
    key = {"FP32": "FLOAT", "FP16": "HALF"}.get(key.upper(), key)
    if key.upper() in _TRT_TO_NUMPY:
        return _TRT_TO_NUMPY[key.upper()]
    if key.startswith("k") and key[1:].upper() in _TRT_TO_NUMPY:
        return _TRT_TO_NUMPY[key[1:].upper()]
    try:
        return np.dtype(key).name
    except TypeError:
        return key.lower()


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy name
    is_input: bool
    shape: tuple[int, ...]  # as built; -1 marks a dynamic axis


Shape = tuple[int, ...]


def validate(
    sidecar: EngineSidecar,
    inputs: list[TensorInfo],
    outputs: list[TensorInfo],
    profiles: list[tuple[Shape, Shape, Shape]],
    *,
    engine_name: str,
    hardware_compatible: bool | None = None,
) -> None:
    """Raise EngineError listing every way the engine and its sidecar disagree.

    `hardware_compatible` is what the engine says (None where this TensorRT cannot tell).
    """
    problems: list[str] = []
    if hardware_compatible is not None and hardware_compatible != sidecar.hardware_compatible:
        problems.append(
            f"the engine is {'' if hardware_compatible else 'not '}hardware-compatible (Ampere+) "
            f"but the sidecar says {'it is' if sidecar.hardware_compatible else 'it is not'}"
        )

    def compare_io(kind: str, found: list[TensorInfo], declared: dict[str, str]) -> None:
        names = [t.name for t in found]
        if set(names) != set(declared):
            problems.append(f"{kind} are {names} in the engine but {list(declared)} in the sidecar")
            return
        for t in found:
            want = normalize_dtype(declared[t.name])
            if t.dtype != want:
                problems.append(
                    f"{kind[:-1]} {t.name!r} is {t.dtype} in the engine but {want} in the sidecar"
                )

    compare_io("inputs", inputs, sidecar.inputs)
    compare_io("outputs", outputs, sidecar.outputs)

    spec = sidecar.model_spec
    if "input_name" in spec and [t.name for t in inputs] != [spec["input_name"]]:
        problems.append(
            f"the model spec's input is {spec['input_name']!r}; "
            f"the engine's inputs are {[t.name for t in inputs]}"
        )
    if "output_names" in spec and set(spec["output_names"]) != {t.name for t in outputs}:
        problems.append(
            f"the model spec's outputs are {list(spec['output_names'])}; "
            f"the engine's are {[t.name for t in outputs]}"
        )

    if len(profiles) != len(sidecar.profiles):
        problems.append(
            f"the engine has {len(profiles)} optimization profile(s), the sidecar {len(sidecar.profiles)}"
        )
    else:
        for i, (built, declared) in enumerate(zip(profiles, sidecar.profiles, strict=True)):
            if built != (declared.min, declared.opt, declared.max):
                problems.append(
                    f"profile {i} ({declared.name}) is min={built[0]} opt={built[1]} max={built[2]} in the "
                    f"engine but min={declared.min} opt={declared.opt} max={declared.max} in the sidecar"
                )

    if problems:
        raise EngineError(
            f"engine {engine_name} does not match its sidecar: "
            + "; ".join(problems)
            + ". Rebuild both with `facedet convert --engine`"
        )


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to `logging` and keeps the last errors, so a failed call
    (deserialization returning None, say) can say why in its exception."""
    base = getattr(trt, "ILogger", None)
    if base is None:  # pragma: no cover - every TensorRT module we know has one
        return trt.Logger(trt.Logger.WARNING)

    error_level = int(trt.ILogger.Severity.ERROR)
    warning_level = int(trt.ILogger.Severity.WARNING)

    class CapturingLogger(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.errors: collections.deque[str] = collections.deque(maxlen=16)
            self.lock = threading.Lock()

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level <= error_level:
                log.error("TensorRT: %s", msg)
                with self.lock:
                    self.errors.append(msg)
            elif level <= warning_level:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

        def take_errors(self) -> list[str]:
            with self.lock:
                errors = list(self.errors)
                self.errors.clear()
            return errors

    return CapturingLogger()


def _dims(value: Any) -> Shape:
    return tuple(int(d) for d in value)


class Engine:
    """A deserialized, validated TensorRT engine. Create execution contexts with `create_context`;
    close the contexts (drop them) before closing the engine."""

    def __init__(
        self,
        *,
        trt: ModuleType,
        runtime: Any,
        engine: Any,
        logger: Any,
        sidecar: EngineSidecar,
        name: str,
        device: int,
    ) -> None:
        self.trt = trt
        self.runtime = runtime
        self.engine = engine
        self.logger = logger
        self.sidecar = sidecar
        self.name = name
        self.device = device
        self.lean = is_lean(trt)
        self.tensorrt_version = tensorrt_version(trt)
        self.inputs, self.outputs = describe_io(trt, engine)
        # Validated equal to the sidecar's, so the sidecar's (named, 4-D) profiles describe the engine.
        self.profiles: list[Profile] = list(sidecar.profiles)

    # ---- loading ----

    @classmethod
    def load(
        cls,
        plan_path: Path | str,
        sidecar: EngineSidecar | None = None,
        *,
        device: int = 0,
        trt: ModuleType | None = None,
        device_info: tuple[str, str] | None = None,
        allow_host_code: bool | None = None,
    ) -> Engine:
        """Deserialize `plan_path` after checking its sidecar (default `<plan_path>.json`).

        `device_info` is (GPU name, compute capability); by default it is read from CUDA.
        `allow_host_code` lets TensorRT run the lean runtime embedded in a version-compatible plan;
        it defaults to the sidecar's `version_compatible`, and must only be on for trusted plans.
        """
        path = Path(plan_path)
        if sidecar is None:
            sidecar = read_sidecar(path)
        try:
            plan = path.read_bytes()
        except FileNotFoundError:
            raise EngineError(f"no engine file {path}") from None
        except OSError as exc:
            raise EngineError(f"cannot read engine file {path}: {exc}") from exc
        return cls.from_bytes(
            plan,
            sidecar,
            name=path.name,
            device=device,
            trt=trt,
            device_info=device_info,
            allow_host_code=allow_host_code,
        )

    @classmethod
    def from_bytes(
        cls,
        plan: bytes,
        sidecar: EngineSidecar,
        *,
        name: str = "<in memory>",
        device: int = 0,
        trt: ModuleType | None = None,
        device_info: tuple[str, str] | None = None,
        allow_host_code: bool | None = None,
    ) -> Engine:
        if trt is None:
            trt = load_tensorrt()
        if device_info is None:
            from facedet_trt import cuda

            cuda.set_device(device)
            info = cuda.device_info(device)
            device_info = (info.name, info.compute_capability)
        gpu_name, compute_capability = device_info
        check_compatible(
            sidecar,
            tensorrt_version=tensorrt_version(trt),
            gpu_name=gpu_name,
            compute_capability=compute_capability,
            lean_runtime=is_lean(trt),
            engine_name=name,
        )
        if not plan:
            raise EngineError(f"engine {name} is empty (0 bytes); rebuild it with `facedet convert --engine`")

        logger = _make_logger(trt)
        try:
            runtime = trt.Runtime(logger)
        except Exception as exc:
            raise EngineError(f"cannot create a TensorRT runtime ({trt.__name__}): {exc}") from exc
        # A failed createInferRuntime (no usable CUDA, say) still hands Python a Runtime object, and
        # deserializing with it crashes the process: the logged errors are the only signal.
        creation_errors = _taken(logger)
        if runtime is None or creation_errors:
            raise EngineError(
                f"cannot create a TensorRT runtime ({trt.__name__} {tensorrt_version(trt)}): "
                + (" | ".join(creation_errors) or "TensorRT logged no error")
            )
        if allow_host_code is None:
            allow_host_code = sidecar.version_compatible
        if allow_host_code and hasattr(runtime, "engine_host_code_allowed"):
            runtime.engine_host_code_allowed = True

        try:
            engine = runtime.deserialize_cuda_engine(plan)
        except Exception as exc:
            raise EngineError(f"TensorRT could not deserialize engine {name}: {exc}") from exc
        if engine is None:
            raise EngineError(
                f"TensorRT could not deserialize engine {name} ({len(plan)} bytes; "
                f"{trt.__name__} {tensorrt_version(trt)}): {_errors(logger)}. "
                "The file is corrupt or not a TensorRT plan for this runtime; "
                "rebuild it with `facedet convert --engine`"
            )
        inputs, outputs = describe_io(trt, engine)
        validate(
            sidecar,
            inputs,
            outputs,
            describe_profiles(engine, inputs),
            engine_name=name,
            hardware_compatible=describe_hardware_compat(engine),
        )
        return cls(
            trt=trt, runtime=runtime, engine=engine, logger=logger, sidecar=sidecar, name=name, device=device
        )

    # ---- use ----

    @property
    def input(self) -> TensorInfo:
        if len(self.inputs) != 1:
            raise EngineError(f"engine {self.name} has {len(self.inputs)} inputs; the runner handles one")
        return self.inputs[0]

    def create_context(self) -> Any:
        if self.engine is None:
            raise EngineError(f"engine {self.name} is closed")
        context = self.engine.create_execution_context()
        if context is None:
            raise EngineError(f"cannot create an execution context for {self.name}: {self.last_errors()}")
        return context

    def last_errors(self) -> str:
        return _errors(self.logger)

    # ---- one execution context, with caller-owned device memory ----
    # The runner and any caller that brings its own buffers (device pointers from torch, say) drive
    # a context through these, so TensorRT's failures read the same wherever they happen.

    def profile_for(self, shape: Shape) -> int:
        """The first optimization profile that admits an NCHW input `shape`."""
        for i, profile in enumerate(self.profiles):
            if profile.contains(shape):
                return i
        ranges = ", ".join(f"{p.name}: {p.min}..{p.max}" for p in self.profiles)
        raise ValueError(f"input shape {shape} is outside every optimization profile ({ranges})")

    def select_profile(self, context: Any, index: int, stream_handle: int) -> None:
        if not context.set_optimization_profile_async(index, stream_handle):
            raise EngineError(f"set_optimization_profile_async({index}) failed: {self.last_errors()}")

    def set_input_shape(self, context: Any, shape: Shape) -> dict[str, Shape]:
        """Set the input's shape on `context`; the output shapes it implies, by name."""
        name = self.input.name
        if not context.set_input_shape(name, shape):
            raise EngineError(f"set_input_shape({name!r}, {shape}) failed: {self.last_errors()}")
        shapes = {}
        for info in self.outputs:
            out = _dims(context.get_tensor_shape(info.name))
            if any(d < 0 for d in out):
                raise EngineError(
                    f"output {info.name!r} has shape {out} for input {shape}: data-dependent output "
                    "shapes are not supported"
                )
            shapes[info.name] = out
        return shapes

    def execute(self, context: Any, addresses: Mapping[str, int], stream_handle: int) -> None:
        """Bind each I/O tensor to its device address and queue one run on the CUDA stream
        `stream_handle`; the run reads and writes those addresses in that stream's order."""
        for name, ptr in addresses.items():
            if not context.set_tensor_address(name, ptr):
                raise EngineError(f"set_tensor_address({name!r}) failed: {self.last_errors()}")
        if not context.execute_async_v3(stream_handle):
            raise EngineError(f"execute_async_v3 failed: {self.last_errors()}")

    def close(self) -> None:
        # The engine must go before the runtime that deserialized it.
        self.engine = None
        self.runtime = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _taken(logger: Any) -> list[str]:
    take = getattr(logger, "take_errors", None)
    return list(take()) if take is not None else []


def _errors(logger: Any) -> str:
    errors = _taken(logger)
    return " | ".join(errors) if errors else "TensorRT logged no error"


def describe_io(trt: Any, engine: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    inputs: list[TensorInfo] = []
    outputs: list[TensorInfo] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        info = TensorInfo(
            name=name,
            dtype=normalize_dtype(getattr(dtype, "name", str(dtype))),
            is_input=is_input,
            shape=_dims(engine.get_tensor_shape(name)),
        )
        (inputs if is_input else outputs).append(info)
    return inputs, outputs


def describe_profiles(engine: Any, inputs: list[TensorInfo]) -> list[tuple[Shape, Shape, Shape]]:
    """(min, opt, max) of the (first) input per optimization profile."""
    if not inputs:
        return []
    first = inputs[0]
    if all(d >= 0 for d in first.shape):
        # A static engine: its one shape is its whole range.
        return [(first.shape, first.shape, first.shape)] * max(1, int(engine.num_optimization_profiles))
    profiles = []
    for p in range(int(engine.num_optimization_profiles)):
        lo, opt, hi = engine.get_tensor_profile_shape(first.name, p)
        profiles.append((_dims(lo), _dims(opt), _dims(hi)))
    return profiles


def describe_hardware_compat(engine: Any) -> bool | None:
    level = getattr(engine, "hardware_compatibility_level", None)
    if level is None:
        return None
    # AMPERE_PLUS is the one level that widens the GPUs an engine runs on beyond its compute
    # capability; NONE and SAME_COMPUTE_CAPABILITY both mean "this compute capability".
    return str(getattr(level, "name", level)).rsplit(".", 1)[-1] == "AMPERE_PLUS"
