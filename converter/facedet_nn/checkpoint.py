"""Upstream training checkpoints (`yolov5s-face.pt` and friends) without upstream code and
without trusting the file.

A checkpoint is `torch.save({"model": <models.yolo.Model>, ...})`: a zip holding a pickle of the
whole upstream module tree plus raw tensor storages. Unpickling it normally imports upstream's
`models.yolo` and lets the file call any function it names, so a checkpoint is executable. Here:

- the zip is read with `zipfile`, the storages become tensors through `torch.frombuffer`;
- the pickle goes through `RestrictedUnpickler`, whose `find_class` resolves every global the
  file names against a fixed table: upstream and torch.nn module classes become inert
  `UpstreamObject` stand-ins that only record their state, tensor rebuild functions become our
  own rebuilders, a few harmless data types (numpy arrays in `best_fitness`, paths in `opt`)
  become `Opaque` placeholders, and anything else stops the load with `UnsafeCheckpointError`.
  Of everything the file names, only those functions of ours are ever called;
- the stand-in tree is walked for parameters and buffers, which are renamed onto our model.
"""

from __future__ import annotations

import io
import pickle
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facedet_nn.configs import CONFIGS, ModelConfig
from facedet_nn.model import YoloFace


class CheckpointError(ValueError):
    """The file is not an upstream YOLOv5-Face checkpoint we can read."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks for something a model checkpoint has no business naming."""


class UpstreamObject:
    """Stand-in for an upstream or torch.nn object: holds the pickled state, has no behaviour."""

    upstream_name = "?"
    # Unpickling creates instances with __new__ (no __init__); an object pickled without state
    # reads these class defaults.
    args: tuple[Any, ...] = ()
    state: dict[str, Any] = {}  # noqa: RUF012  (replaced per instance, never mutated)

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state = {}

    def __setstate__(self, state: Any) -> None:
        # nn.Module pickles as (state dict) or (state dict, slot dict).
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {"_state": state}

    def __repr__(self) -> str:
        return f"<upstream {self.upstream_name}>"


class Opaque:
    """Placeholder for data that a checkpoint may carry beside the model and that we never read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Opaque:
        return Opaque(*args)


# Larger than any YOLOv5-Face checkpoint (yolov5l6 in float32 is about 0.3 GiB); a bound on what a
# hostile zip can make us decompress into memory.
MAX_CHECKPOINT_BYTES = 4 << 30

_STUB_CLASSES: dict[str, type[UpstreamObject]] = {}


def _stub_class(module: str, name: str) -> type[UpstreamObject]:
    key = f"{module}.{name}"
    if key not in _STUB_CLASSES:
        _STUB_CLASSES[key] = type(name, (UpstreamObject,), {"upstream_name": key})
    return _STUB_CLASSES[key]


# Upstream's own packages and torch's module classes: replaced by stand-ins.
_STUB_MODULE_PREFIXES = ("models.", "utils.", "torch.nn.modules.")
_STUB_MODULES = {"models", "utils", "__main__"}

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_rest: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise UnsafeCheckpointError("a tensor in the checkpoint does not point at tensor data")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if any(s < 0 for s in size + stride) or offset < 0:
        raise CheckpointError("a tensor in the checkpoint has a negative size, stride or offset")
    if size and all(s > 0 for s in size):
        last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
        if last >= storage.numel():
            raise CheckpointError("a tensor in the checkpoint reaches past the end of its storage")
    return storage.as_strided(size, stride, offset)


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, _type: Any, args: Any, _state: Any) -> Any:
    # A tensor subclass (or a tensor with Python attributes): rebuild the plain tensor only.
    if func not in (_rebuild_tensor, _rebuild_parameter):
        raise UnsafeCheckpointError("a tensor in the checkpoint is rebuilt by an unexpected function")
    return func(*args)


_TORCH_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
}

# Data that can sit beside the model (numpy scalars in best_fitness, Paths in opt, dtypes and
# devices as attributes): never needed, so never built.
_OPAQUE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "Path"),
    ("argparse", "Namespace"),
    ("torch", "device"),
    ("torch", "Size"),
}
_TORCH_DTYPE_NAMES = {
    "float16",
    "half",
    "float32",
    "float",
    "float64",
    "double",
    "bfloat16",
    "int8",
    "int16",
    "int32",
    "int64",
    "long",
    "uint8",
    "bool",
}
_SAFE_BUILTINS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("__builtin__", "set"): set,
}


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, storages: Callable[[str, torch.dtype, int], torch.Tensor]) -> None:
        super().__init__(file, encoding="utf-8")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _TORCH_FUNCTIONS:
            return _TORCH_FUNCTIONS[key]
        if key in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[key]
        if key in _OPAQUE_GLOBALS:
            return Opaque
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPE_NAMES:
            return Opaque()
        if module in _STUB_MODULES or module.startswith(_STUB_MODULE_PREFIXES):
            return _stub_class(module, name)
        raise UnsafeCheckpointError(
            f"refusing to load: the checkpoint names {module}.{name}, which a YOLOv5-Face checkpoint "
            "does not contain (a pickle can run any function it names, so unknown ones are not loaded)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise UnsafeCheckpointError(f"unexpected persistent id in the checkpoint: {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError("a tensor storage in the checkpoint has an unknown type")
        return self._storages(
            str(key.decode() if isinstance(key, bytes) else key), storage_type.dtype, int(numel)
        )


def load_pickle(path: Path) -> Any:
    """The unpickled contents of a zip-format torch checkpoint, with stand-ins for every class."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path} is not a zip-format torch checkpoint (torch >= 1.6 writes those); legacy "
            "checkpoints are not read. Re-save it with a current torch, or export ONNX upstream."
        ) from None
    with archive:
        names = archive.namelist()
        if sum(info.file_size for info in archive.infolist()) > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(
                f"{path} unpacks to more than {MAX_CHECKPOINT_BYTES >> 30} GiB; not a face model"
            )
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} holds {len(pickles)} data.pkl records; expected one")
        root = pickles[0][: -len("data.pkl")]
        byteorder = archive.read(root + "byteorder").decode() if root + "byteorder" in names else "little"
        if byteorder != sys.byteorder:
            raise CheckpointError(
                f"{path} was written on a {byteorder}-endian machine; this one is {sys.byteorder}"
            )
        cache: dict[str, torch.Tensor] = {}

        def storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            if key not in cache:
                record = f"{root}data/{key}"
                if record not in names:
                    raise CheckpointError(f"{path}: tensor data {record} is missing")
                raw = bytearray(archive.read(record))
                itemsize = torch.empty((), dtype=dtype).element_size()
                if len(raw) < numel * itemsize:
                    raise CheckpointError(f"{path}: tensor data {record} is shorter than its header says")
                cache[key] = (
                    torch.frombuffer(raw, dtype=dtype, count=numel) if numel else torch.empty(0, dtype=dtype)
                )
            return cache[key]

        unpickler = RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storage)
        try:
            return unpickler.load()
        except (
            pickle.UnpicklingError,
            EOFError,
            AttributeError,
            TypeError,
            IndexError,
            RecursionError,
        ) as exc:
            raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from None


# --- from stand-ins to our model ---------------------------------------------------------


def _module_children(obj: UpstreamObject) -> dict[str, Any]:
    return dict(obj.state.get("_modules") or {})


def _tensors(obj: UpstreamObject, kind: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in (obj.state.get(kind) or {}).items() if isinstance(v, torch.Tensor)}


def walk(
    obj: UpstreamObject, prefix: str = "", _seen: set[int] | None = None
) -> Iterator[tuple[str, UpstreamObject]]:
    """Every stand-in module under `obj` with its dotted path; each once, even if the pickle
    makes the tree cyclic."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield prefix, obj
    for name, child in _module_children(obj).items():
        if isinstance(child, UpstreamObject):
            yield from walk(child, f"{prefix}.{name}" if prefix else name, seen)


def find_model(ckpt: Any) -> UpstreamObject:
    """The upstream Model inside a checkpoint: its 'ema' copy when present, else 'model'."""
    if isinstance(ckpt, UpstreamObject) and ckpt.upstream_name.endswith(".Model"):
        return ckpt
    if isinstance(ckpt, dict):
        for key in ("ema", "model"):
            candidate = ckpt.get(key)
            if isinstance(candidate, UpstreamObject) and "_modules" in candidate.state:
                return candidate
        raise CheckpointError(f"checkpoint has no model (keys: {', '.join(map(str, ckpt))})")
    raise CheckpointError(f"checkpoint holds a {type(ckpt).__name__}, not a dict with a model")


# Upstream's ShuffleV2Block keeps bare Conv2d/BatchNorm2d pairs in Sequentials where ours has
# Conv units: (branch, upstream index) -> our sub-path.
_SHUFFLE_KEYS = {
    ("branch1", "0"): "0.conv",
    ("branch1", "1"): "0.bn",
    ("branch1", "2"): "1.conv",
    ("branch1", "3"): "1.bn",
    ("branch2", "0"): "0.conv",
    ("branch2", "1"): "0.bn",
    ("branch2", "3"): "1.conv",
    ("branch2", "4"): "1.bn",
    ("branch2", "5"): "2.conv",
    ("branch2", "6"): "2.bn",
}


def _our_module_path(path: str) -> str:
    parts = path.split(".")
    for i in range(len(parts) - 1):
        mapped = _SHUFFLE_KEYS.get((parts[i], parts[i + 1]))
        if mapped is not None:
            return ".".join([*parts[:i], parts[i], mapped, *parts[i + 2 :]])
    return path


@dataclass
class Checkpoint:
    config: ModelConfig
    # Our parameter/buffer names (under `model.`), float32.
    tensors: dict[str, torch.Tensor]
    # Batch-norm eps per our Conv unit path, as upstream trained it.
    bn_eps: dict[str, float]
    # Anchors in pixels, per level, from the Detect layer (autoanchor may have changed them).
    anchors: tuple[tuple[float, ...], ...]
    source_dtype: str


def read_checkpoint(path: Path, name: str | None = None) -> Checkpoint:
    """The tensors, config and anchors of an upstream checkpoint. `name` forces a built-in config
    (the checkpoint must then fit it) or names the checkpoint's own config."""
    model = find_model(load_pickle(Path(path)))
    yaml = model.state.get("yaml")
    if not isinstance(yaml, dict):
        raise CheckpointError(f"{path}: the model carries no config (`yaml` attribute)")
    if name is not None and name in CONFIGS:
        config = CONFIGS[name]  # forced: the checkpoint must fit it
    else:
        config = ModelConfig.from_dict(yaml, name or _known_config_name(yaml) or Path(path).stem)
    layers = _module_children(model).get("model")
    if not isinstance(layers, UpstreamObject):
        raise CheckpointError(f"{path}: the model has no layer list")
    tensors: dict[str, torch.Tensor] = {}
    bn_eps: dict[str, float] = {}
    dtypes: set[str] = set()
    detect: UpstreamObject | None = None
    for module_path, obj in walk(layers, "model"):
        ours = _our_module_path(module_path)
        if obj.upstream_name.endswith(".Detect"):
            detect = obj
        if obj.upstream_name.endswith("BatchNorm2d"):
            bn_eps[ours.rsplit(".", 1)[0]] = float(obj.state.get("eps", 1e-5))
        for kind in ("_parameters", "_buffers"):
            for key, tensor in _tensors(obj, kind).items():
                if obj is detect and key in ("anchors", "anchor_grid"):
                    continue
                dtypes.add(str(tensor.dtype).replace("torch.", ""))
                tensors[f"{ours}.{key}"] = tensor.float() if tensor.is_floating_point() else tensor.clone()
    if detect is None:
        raise CheckpointError(f"{path}: the model has no Detect layer")
    anchors = _pixel_anchors(detect, config)
    floating = sorted(d for d in dtypes if d.startswith(("float", "bfloat")))
    return Checkpoint(config, tensors, bn_eps, anchors, "/".join(floating) or "?")


def _pixel_anchors(detect: UpstreamObject, config: ModelConfig) -> tuple[tuple[float, ...], ...]:
    """Upstream keeps `anchors` in grid cells (divided by the stride) and `anchor_grid` in pixels;
    either beats the config, which autoanchor may have overruled during training."""
    buffers = _tensors(detect, "_buffers")
    levels = len(config.anchors)
    if "anchor_grid" in buffers:
        pixels = buffers["anchor_grid"].float().reshape(levels, -1)
    else:
        stride = detect.state.get("stride")
        if "anchors" not in buffers or not isinstance(stride, torch.Tensor):
            return config.anchors
        pixels = (buffers["anchors"].float() * stride.float().view(-1, 1, 1)).reshape(levels, -1)
    return tuple(tuple(float(v) for v in level) for level in pixels)


def _known_config_name(yaml: dict[str, Any]) -> str | None:
    try:
        probe = ModelConfig.from_dict(yaml, "probe")
    except ValueError:
        return None
    for config in CONFIGS.values():
        if (config.depth_multiple, config.width_multiple, config.layers) == (
            probe.depth_multiple,
            probe.width_multiple,
            probe.layers,
        ):
            return config.name
    return None


def import_checkpoint(path: Path, name: str | None = None) -> YoloFace:
    """Our fused float32 model with the weights of an upstream training checkpoint (see
    read_checkpoint for `name`)."""
    ckpt = read_checkpoint(path, name)
    config = ModelConfig(
        name=ckpt.config.name,
        depth_multiple=ckpt.config.depth_multiple,
        width_multiple=ckpt.config.width_multiple,
        anchors=ckpt.anchors,
        backbone=ckpt.config.backbone,
        head=ckpt.config.head,
        num_classes=ckpt.config.num_classes,
    )
    model = YoloFace(config)
    for unit_path, unit in model.conv_units():
        # A checkpoint saved after upstream's fuse() has conv biases and no batch norm.
        if f"{unit_path}.conv.bias" in ckpt.tensors and f"{unit_path}.bn.weight" not in ckpt.tensors:
            unit.make_fused()
        elif unit_path in ckpt.bn_eps:
            unit.bn.eps = ckpt.bn_eps[unit_path]  # type: ignore[assignment]
    expected = model.state_dict()
    missing = [k for k in expected if k not in ckpt.tensors]
    unexpected = [k for k in ckpt.tensors if k not in expected]
    if missing or unexpected:
        first = f"first missing: {missing[0]}" if missing else f"first unexpected: {unexpected[0]}"
        raise CheckpointError(
            f"{path}: checkpoint does not fit {config.name} ({len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected; {first})"
        )
    for key, value in expected.items():
        if tuple(value.shape) != tuple(ckpt.tensors[key].shape):
            raise CheckpointError(
                f"{path}: layer {key.rsplit('.', 1)[0]} has shape {list(ckpt.tensors[key].shape)} in the "
                f"checkpoint but {list(value.shape)} in {config.name}"
            )
    model.load_state_dict(ckpt.tensors)
    return model.fuse().eval()
