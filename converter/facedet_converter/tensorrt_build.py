"""Serialized TensorRT engines from our ONNX export, with the TensorRT Python builder (10.x, 11.x).

The only module that imports `tensorrt` (lazily, inside functions). What to build is decided in
engine_plan.py; this module carries the plan out:

    ONNX --OnnxParser--> network --builder config (profiles, flags, timing cache,
    calibrator)--> serialized plan, written atomically, then the JSON sidecar beside it.

Device memory for INT8 calibration batches comes from cuda-bindings (the `gpu` extra), else
from torch's CUDA allocator.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from facedet_server.model.spec import ModelSpec
from facedet_trt.sidecar import EngineSidecar, write_sidecar

from facedet_converter.calibration import CalibrationData
from facedet_converter.engine_plan import (
    BuildPlan,
    EngineBuildError,
    EngineOptions,
    calibration_cache_path,
    make_sidecar,
    plan_build,
    timing_cache_path,
)


def tensorrt_version() -> str | None:
    """The installed TensorRT builder's version, or None where `tensorrt` does not import."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(name, 'major.minor' compute capability) of a CUDA device."""
    try:
        from cuda.bindings import runtime as cudart

        err, props = cudart.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
            return name.rstrip("\x00"), f"{props.major}.{props.minor}"
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return torch.cuda.get_device_name(device), f"{major}.{minor}"
    except ImportError:
        pass
    raise EngineBuildError(
        "no CUDA device found (or neither cuda-bindings nor a CUDA build of torch is installed); "
        "TensorRT engines are built on the GPU they will run on"
    )


class _DeviceBuffer:
    """One device allocation for calibration batches."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self._tensor: Any = None
        try:
            from cuda.bindings import runtime as cudart

            self._cudart: Any = cudart
            err, ptr = cudart.cudaMalloc(nbytes)
            if int(err) != 0:
                raise EngineBuildError(f"cudaMalloc({nbytes}) failed: {err}")
            self.ptr = int(ptr)
        except ImportError:
            import torch

            self._cudart = None
            self._tensor = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
            self.ptr = int(self._tensor.data_ptr())

    def upload(self, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        if host.nbytes != self.nbytes:
            raise EngineBuildError(f"calibration batch has {host.nbytes} bytes, buffer {self.nbytes}")
        if self._cudart is not None:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            (err,) = self._cudart.cudaMemcpy(self.ptr, host.ctypes.data, host.nbytes, kind)
            if int(err) != 0:
                raise EngineBuildError(f"cudaMemcpy to the calibration buffer failed: {err}")
        else:
            import torch

            self._tensor.copy_(torch.from_numpy(host.view(np.uint8).reshape(-1)))
            torch.cuda.synchronize()

    def free(self) -> None:
        if self._cudart is not None and self.ptr:
            self._cudart.cudaFree(self.ptr)
            self.ptr = 0
        self._tensor = None


def _entropy_calibrator(trt: Any, data: CalibrationData, cache_path: Path, log: Callable[[str], None]) -> Any:
    """An IInt8EntropyCalibrator2 feeding `data` (TensorRT 10.x; 11.x has no calibrators)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(data)
            self.done = 0
            self.buffer = _DeviceBuffer(int(np.prod(data.shape)) * 4)

        def get_batch_size(self) -> int:
            return int(data.shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.batches, None)
            if batch is None:
                self.buffer.free()
                return None
            self.buffer.upload(batch)
            self.done += 1
            log(f"calibration batch {self.done}/{len(data)}")
            return [self.buffer.ptr]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            _atomic_write(cache_path, bytes(cache))

    return EntropyCalibrator()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_engine(
    onnx_paths: dict[str, Path],
    engine_path: Path,
    spec: ModelSpec,
    options: EngineOptions,
    *,
    log: Callable[[str], None] = print,
) -> EngineSidecar:
    """Build `engine_path` and its sidecar. `onnx_paths` maps "fp32" (and "fp16", needed for FP16
    on TensorRT 11) to our exports of the same weights."""
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineBuildError(
            "the TensorRT Python builder is not installed (pip install tensorrt, version 10.x or 11.x, "
            "on a machine with an NVIDIA GPU and driver)"
        ) from None
    plan = plan_build(options, str(trt.__version__))
    onnx_path = onnx_paths.get(plan.onnx_precision)
    if onnx_path is None:
        raise EngineBuildError(f"this build needs the {plan.onnx_precision} ONNX export, which was not given")
    gpu_name, compute_capability = gpu_info()
    log(
        f"TensorRT {trt.__version__} on {gpu_name} (compute {compute_capability}), "
        f"building from {onnx_path.name}"
    )

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse_network(trt, builder, logger, onnx_path, plan)
    config = builder.create_builder_config()
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.hardware_compatibility:
        config.hardware_compatibility_level = getattr(
            trt.HardwareCompatibilityLevel, plan.hardware_compatibility
        )
    profiles = []
    for p in options.profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(spec.input_name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
        profiles.append(profile)

    calibrator = None
    if plan.calibrate:
        assert options.calib_dir is not None and plan.calibration_shape is not None
        data = CalibrationData(
            options.calib_dir,
            plan.calibration_shape,
            max_batches=options.calib_batches,
            pad_value=spec.pad_value,
            scale=spec.scale,
        )
        cache = options.calib_cache or calibration_cache_path(engine_path)
        log(f"INT8 calibration: {len(data.images)} images in {len(data)} batches of {plan.calibration_shape}")
        calibrator = _entropy_calibrator(trt, data, cache, log)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profiles[0])

    cache_file = options.timing_cache or timing_cache_path(str(trt.__version__), gpu_name, compute_capability)
    timing_cache = _load_timing_cache(config, cache_file, log)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT failed to build the engine; its log above says why")
    _atomic_write(Path(engine_path), bytes(serialized))
    _atomic_write(cache_file, bytes(timing_cache.serialize()))
    sidecar = make_sidecar(
        spec,
        onnx_path=onnx_path,
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        options=options,
    )
    write_sidecar(Path(engine_path), sidecar)
    log(f"wrote {engine_path} and {Path(engine_path).name}.json; timing cache {cache_file}")
    return sidecar


def _parse_network(trt: Any, builder: Any, logger: Any, onnx_path: Path, plan: BuildPlan) -> Any:
    if plan.major >= 11:
        network = builder.create_network()  # strongly typed is the only kind in 11.x
    else:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
        network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network


def _load_timing_cache(config: Any, path: Path, log: Callable[[str], None]) -> Any:
    """Attach the persistent timing cache (empty when absent or unusable) to `config`."""
    blob = b""
    if path.is_file():
        blob = path.read_bytes()
        log(f"timing cache {path} ({len(blob)} bytes)")
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, False):
        # A cache from another TensorRT release or GPU: start afresh rather than fail the build.
        log(f"timing cache {path} does not fit this TensorRT/GPU; starting an empty one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache
