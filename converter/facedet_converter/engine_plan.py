"""Everything about a TensorRT engine build that does not need TensorRT: shape profiles, which
precision path a TensorRT version supports, the timing-cache location, and the sidecar.

tensorrt_build.py executes a BuildPlan with the TensorRT builder; this module decides it, so the
decisions are tested on machines without TensorRT (all of ours).

TensorRT 10 and 11 differ where it matters here. 10.x builds weakly typed networks, where the
FP16 and INT8 builder flags let TensorRT pick lower-precision kernels, and INT8 scales come from
a calibrator. 11.x removed weak typing, the precision flags and calibrators: a network runs in
the types its ONNX file declares. So for FP16 on 11.x we parse our float16 export (float32 I/O,
float16 inside), and INT8 needs 10.x (11.x wants explicit Q/DQ quantization, not done here).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from facedet_server.model.files import facedet_home, sha256_of
from facedet_server.model.spec import ModelSpec
from facedet_trt.sidecar import EngineSidecar, Profile, parse_version

Shape4 = tuple[int, int, int, int]
Precision = Literal["fp32", "fp16", "int8"]

SUPPORTED_MAJORS = (10, 11)
# Defaults fit the server's defaults: input_size 640 (any rectangle with a long side of at most
# 640), max_batch 8; kernels are tuned for one 640x640 image.
DEFAULT_MIN: Shape4 = (1, 3, 32, 32)
DEFAULT_OPT: Shape4 = (1, 3, 640, 640)
DEFAULT_MAX: Shape4 = (8, 3, 640, 640)
MAX_SIDE = 1920


class EngineBuildError(ValueError):
    """The requested engine cannot be built as asked; the message says what to change."""


def parse_shape(text: str) -> Shape4:
    """'8x3x640x640' (or trtexec's 'images:8x3x640x640') -> (8, 3, 640, 640)."""
    value = text.split(":", 1)[1] if ":" in text else text
    parts = re.split(r"[x,]", value.strip().lower())
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise EngineBuildError(f"shape {text!r} is not NxCxHxW, e.g. 8x3x640x640") from None
    if len(dims) != 4:
        raise EngineBuildError(f"shape {text!r} has {len(dims)} dimensions; expected NxCxHxW")
    return (dims[0], dims[1], dims[2], dims[3])


def make_profiles(
    mins: list[str] | None,
    opts: list[str] | None,
    maxs: list[str] | None,
    size_multiple: int = 32,
) -> list[Profile]:
    """Optimization profiles from repeated --min/--opt/--max-shape options (the i-th of each
    forms profile i); none given means one default profile."""
    mins, opts, maxs = mins or [], opts or [], maxs or []
    if not (mins or opts or maxs):
        smallest = (1, 3, size_multiple, size_multiple)
        return [checked_profile(Profile("default", smallest, DEFAULT_OPT, DEFAULT_MAX), size_multiple)]
    if not len(mins) == len(opts) == len(maxs):
        raise EngineBuildError(
            f"give --min-shape, --opt-shape and --max-shape the same number of times "
            f"(got {len(mins)}, {len(opts)}, {len(maxs)}); the i-th of each makes profile i"
        )
    profiles = []
    for i, (lo, mid, hi) in enumerate(zip(mins, opts, maxs, strict=True)):
        try:
            profile = Profile(f"profile{i}", parse_shape(lo), parse_shape(mid), parse_shape(hi))
        except ValueError as exc:
            raise EngineBuildError(str(exc)) from None
        profiles.append(checked_profile(profile, size_multiple))
    return profiles


def checked_profile(profile: Profile, size_multiple: int = 32) -> Profile:
    for label, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
        _, c, h, w = shape
        if c != 3:
            raise EngineBuildError(f"profile {profile.name}: {label} shape {shape} must have 3 channels")
        for side in (h, w):
            if side % size_multiple or not size_multiple <= side <= MAX_SIDE:
                raise EngineBuildError(
                    f"profile {profile.name}: {label} shape {shape}: height and width must be multiples "
                    f"of {size_multiple} from {size_multiple} to {MAX_SIDE}"
                )
    return profile


@dataclass(frozen=True)
class EngineOptions:
    precision: Precision = "fp16"
    profiles: tuple[Profile, ...] = (Profile("default", DEFAULT_MIN, DEFAULT_OPT, DEFAULT_MAX),)
    calib_dir: Path | None = None
    calib_batches: int = 64  # at most this many batches of the calibration profile's opt shape
    calib_cache: Path | None = None
    timing_cache: Path | None = None
    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    hardware_compatible: bool = False
    workspace_mib: int | None = None
    optimization_level: int | None = None


@dataclass(frozen=True)
class BuildPlan:
    tensorrt_version: str
    major: int
    # Which of our ONNX exports to parse: "fp32" (float32 throughout) or "fp16" (float16 inside).
    onnx_precision: Literal["fp32", "fp16"]
    strongly_typed: bool
    # trt.BuilderFlag member names to set.
    builder_flags: tuple[str, ...]
    # trt.HardwareCompatibilityLevel member name, if any.
    hardware_compatibility: str | None
    calibrate: bool
    calibration_shape: Shape4 | None


def plan_build(options: EngineOptions, tensorrt_version: str) -> BuildPlan:
    """Decide how to build, or raise EngineBuildError saying why it cannot be done."""
    try:
        version = parse_version(tensorrt_version)
    except ValueError as exc:
        raise EngineBuildError(str(exc)) from None
    major = version[0]
    if major not in SUPPORTED_MAJORS:
        raise EngineBuildError(
            f"TensorRT {tensorrt_version} is not supported: facedet builds engines with TensorRT "
            f"{' or '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}"
        )
    if not options.profiles:
        raise EngineBuildError("an engine needs at least one optimization profile")
    if options.exclude_lean_runtime and not options.version_compatible:
        raise EngineBuildError("--exclude-lean-runtime only applies to --version-compatible engines")
    flags: list[str] = []
    onnx_precision: Literal["fp32", "fp16"] = "fp32"
    strongly_typed = major >= 11
    calibrate = False
    if options.precision == "fp16":
        if major >= 11:
            onnx_precision = "fp16"
        else:
            flags.append("FP16")
    elif options.precision == "int8":
        if major >= 11:
            raise EngineBuildError(
                f"INT8 with a calibrator is not available in TensorRT {tensorrt_version}: TensorRT 11 "
                "removed implicit quantization. Build INT8 engines with TensorRT 10.x, or quantize "
                "the ONNX explicitly (Q/DQ nodes, e.g. NVIDIA ModelOpt) and build that; FP16 works here"
            )
        if options.calib_dir is None:
            raise EngineBuildError("--int8 needs --calib DIR, a folder of representative JPEG/PNG images")
        # FP16 too, so layers TensorRT runs better (or only) in floating point need not fall back to FP32.
        flags += ["INT8", "FP16"]
        calibrate = True
    elif options.precision != "fp32":
        raise EngineBuildError(f"precision must be fp32, fp16 or int8, not {options.precision!r}")
    if options.version_compatible:
        flags.append("VERSION_COMPATIBLE")
        if options.exclude_lean_runtime:
            flags.append("EXCLUDE_LEAN_RUNTIME")
    calibration_shape = options.profiles[0].opt if calibrate else None
    return BuildPlan(
        tensorrt_version=tensorrt_version,
        major=major,
        onnx_precision=onnx_precision,
        strongly_typed=strongly_typed,
        builder_flags=tuple(flags),
        hardware_compatibility="AMPERE_PLUS" if options.hardware_compatible else None,
        calibrate=calibrate,
        calibration_shape=calibration_shape,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unknown"


def timing_cache_path(
    tensorrt_version: str, gpu_name: str, compute_capability: str, home: Path | None = None
) -> Path:
    """Where the persistent timing cache lives by default. Timings are only valid for one GPU
    model and TensorRT release, so each pair gets its own file (a mismatched cache would be
    rejected by TensorRT anyway, throwing the other pair's timings away)."""
    name = f"timing-trt{_slug(tensorrt_version)}-sm{_slug(compute_capability)}-{_slug(gpu_name)}.cache"
    return (home or facedet_home()) / "tensorrt" / name


def calibration_cache_path(engine_path: Path) -> Path:
    return Path(engine_path).with_name(Path(engine_path).name + ".calib")


def make_sidecar(
    spec: ModelSpec,
    *,
    onnx_path: Path,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    options: EngineOptions,
    created: str | None = None,
) -> EngineSidecar:
    """What the runtime needs to check and use the engine (facedet_trt.sidecar)."""
    return EngineSidecar(
        model_spec=dataclasses.asdict(spec),
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        profiles=list(options.profiles),
        precision=options.precision,
        version_compatible=options.version_compatible,
        onnx_sha256=sha256_of(onnx_path),
        created=created or datetime.now(UTC).isoformat(timespec="seconds"),
        inputs={spec.input_name: "float32"},
        outputs={name: "float32" for name in spec.output_names},
        hardware_compatible=options.hardware_compatible,
    )
