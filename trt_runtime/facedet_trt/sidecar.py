"""The JSON sidecar written beside a TensorRT plan (`model.plan` -> `model.plan.json`).

A plan is opaque and tied to the GPU and TensorRT version that built it; deserializing it
elsewhere fails deep inside TensorRT, or worse, half-works. The sidecar records what the converter
knew (model spec, I/O, profiles, build GPU and TensorRT version) so the runtime can refuse a
foreign engine up front with a message that says what to do.

Pure Python on purpose: the converter and the CPU tests import it where there is no CUDA.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

PRECISIONS = ("fp32", "fp16", "int8")

# Hardware-compatible (AMPERE_PLUS) engines run on any GPU from Ampere (compute 8.0) on.
HARDWARE_COMPAT_MIN_CC = (8, 0)

REBUILD_HINT = "rebuild it with `facedet convert --engine`"

Shape4 = tuple[int, int, int, int]


class SidecarError(ValueError):
    """The sidecar is missing, unreadable or not one this runtime understands."""


class EngineMismatch(Exception):
    """The engine was built for another GPU or TensorRT version than this machine's."""


@dataclass(frozen=True)
class Profile:
    """One optimization profile: the NCHW input shapes it was built for."""

    name: str
    min: Shape4
    opt: Shape4
    max: Shape4

    def __post_init__(self) -> None:
        # Accept lists (as JSON gives) and store tuples, so equality and hashing behave.
        for label in ("min", "opt", "max"):
            object.__setattr__(self, label, _shape4(getattr(self, label)))
        for label, shape in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if len(shape) != 4 or any(int(d) <= 0 for d in shape):
                raise ValueError(f"profile {self.name!r}: {label} shape {shape} is not a positive NCHW shape")
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise ValueError(
                f"profile {self.name!r}: shapes must satisfy min <= opt <= max per axis, "
                f"got min={self.min} opt={self.opt} max={self.max}"
            )

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True)
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        return cls(
            name=str(data["name"]),
            min=_shape4(data["min"]),
            opt=_shape4(data["opt"]),
            max=_shape4(data["max"]),
        )


def _shape4(value: Any) -> Shape4:
    dims = tuple(int(d) for d in value)
    if len(dims) != 4:
        raise ValueError(f"expected an NCHW shape of 4 dims, got {list(value)}")
    return (dims[0], dims[1], dims[2], dims[3])


@dataclass(frozen=True)
class EngineSidecar:
    # `dataclasses.asdict(ModelSpec)`; see facedet_server.model.spec.
    model_spec: dict[str, Any]
    tensorrt_version: str
    gpu_name: str
    # "major.minor", as CUDA reports it, e.g. "9.0".
    compute_capability: str
    profiles: list[Profile]
    precision: str
    version_compatible: bool
    onnx_sha256: str
    # ISO 8601 build time.
    created: str
    # Tensor name -> dtype name (numpy spelling, e.g. "float32").
    inputs: dict[str, str]
    outputs: dict[str, str]
    # Built with HardwareCompatibilityLevel.AMPERE_PLUS: runs on any compute >= 8.0.
    hardware_compatible: bool = False
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if not self.profiles:
            raise ValueError("an engine sidecar needs at least one optimization profile")
        # Store the spec as JSON would give it back (tuples become lists), so a sidecar compares
        # equal to itself after a write/read round trip.
        object.__setattr__(self, "model_spec", json.loads(json.dumps(self.model_spec)))
        object.__setattr__(self, "profiles", list(self.profiles))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineSidecar:
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.name not in ("hardware_compatible", "schema")}
        missing = sorted(required - data.keys())
        if missing:
            raise ValueError(f"missing field(s): {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["profiles"] = [Profile.from_dict(p) for p in data["profiles"]]
        kwargs["inputs"] = {str(k): str(v) for k, v in data["inputs"].items()}
        kwargs["outputs"] = {str(k): str(v) for k, v in data["outputs"].items()}
        for flag in ("version_compatible", "hardware_compatible"):
            if flag in kwargs and not isinstance(kwargs[flag], bool):
                raise ValueError(f"{flag} must be true or false, got {kwargs[flag]!r}")
        # Unknown keys are dropped: a newer writer may add optional fields without a schema bump.
        return cls(**kwargs)


def sidecar_path(engine_path: Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_sidecar(engine_path: Path, sidecar: EngineSidecar) -> Path:
    """Write `<engine_path>.json` atomically, so a reader never sees half a file."""
    path = sidecar_path(engine_path)
    text = json.dumps(sidecar.to_dict(), indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_sidecar(engine_path: Path) -> EngineSidecar:
    path = sidecar_path(engine_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SidecarError(
            f"no sidecar {path} beside engine {Path(engine_path).name}: the runtime cannot check "
            f"what the engine was built for; {REBUILD_HINT}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SidecarError(f"cannot read engine sidecar {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SidecarError(f"engine sidecar {path} is not valid JSON ({exc}); {REBUILD_HINT}") from exc
    if not isinstance(data, dict):
        raise SidecarError(f"engine sidecar {path} holds a {type(data).__name__}, not a JSON object")
    schema = data.get("schema", None)
    if schema != SCHEMA_VERSION:
        raise SidecarError(
            f"engine sidecar {path} has schema {schema!r}; this runtime reads schema {SCHEMA_VERSION} "
            f"only; {REBUILD_HINT} or upgrade facedet"
        )
    try:
        return EngineSidecar.from_dict(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SidecarError(f"engine sidecar {path} is malformed: {exc}") from exc


def parse_version(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); trailing non-numeric tags (rc, post) are ignored."""
    parts: list[int] = []
    for piece in str(version).strip().split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    if not parts:
        raise ValueError(f"cannot parse version {version!r}")
    return tuple(parts)


def _parse_cc(cc: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(cc))
    if m is None:
        raise ValueError(f"cannot parse compute capability {cc!r} (expected e.g. '9.0')")
    return int(m.group(1)), int(m.group(2))


def _same_release(built: tuple[int, ...], here: tuple[int, ...]) -> bool:
    # TensorRT requires major.minor.patch(.build) to match; compare as many components as both give,
    # but at least three, so "10.3" never matches "10.3.1".
    n = max(3, min(len(built), len(here)))
    pad = (0,) * 4
    return (built + pad)[:n] == (here + pad)[:n]


def check_compatible(
    sidecar: EngineSidecar,
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    lean_runtime: bool = False,
    engine_name: str | None = None,
) -> None:
    """Raise EngineMismatch unless this machine can run the engine the sidecar describes.

    Rules (TensorRT's): a plain engine needs the exact TensorRT release it was built with; a
    version-compatible one runs on that release or any later one of the same major, and is the only
    kind the lean runtime can load. The compute capability must match unless the engine was built
    hardware-compatible (Ampere and later). The GPU name is reported but not enforced: TensorRT
    only warns when two GPUs of one compute capability differ.
    """
    label = (
        f"engine {engine_name}"
        if engine_name
        else f"engine for {sidecar.model_spec.get('name', 'an unnamed model')}"
    )
    reasons: list[str] = []
    try:
        built_v = parse_version(sidecar.tensorrt_version)
        here_v = parse_version(tensorrt_version)
        built_cc = _parse_cc(sidecar.compute_capability)
        here_cc = _parse_cc(compute_capability)
    except ValueError as exc:
        raise EngineMismatch(f"{label}: {exc}; {REBUILD_HINT}") from exc

    if sidecar.version_compatible:
        if here_v[0] != built_v[0] or here_v < built_v:
            reasons.append(
                f"a version-compatible engine runs only on TensorRT {built_v[0]}.x from "
                f"{sidecar.tensorrt_version} on"
            )
    elif lean_runtime:
        reasons.append("the lean runtime loads only version-compatible engines")
    elif not _same_release(built_v, here_v):
        reasons.append("the engine is not version-compatible, so the TensorRT versions must match")

    if sidecar.hardware_compatible:
        if here_cc < HARDWARE_COMPAT_MIN_CC:
            reasons.append("a hardware-compatible engine needs an Ampere or newer GPU (compute >= 8.0)")
    elif here_cc != built_cc:
        reasons.append("the compute capabilities differ and the engine is not hardware-compatible")

    if reasons:
        runtime = "the TensorRT lean runtime" if lean_runtime else "TensorRT"
        raise EngineMismatch(
            f"{label} was built for {sidecar.gpu_name} (compute {sidecar.compute_capability}) with "
            f"TensorRT {sidecar.tensorrt_version}; this machine has {gpu_name} ({compute_capability}) "
            f"with {runtime} {tensorrt_version} ({'; '.join(reasons)}): {REBUILD_HINT}"
        )
