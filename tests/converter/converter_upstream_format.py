"""Write checkpoints in the upstream YOLOv5-Face format, without upstream code.

An upstream `.pt` is `torch.save({"model": <models.yolo.Model>, ...})`, pickling upstream's own
classes (`models.common.Conv`, `models.yolo.Detect`, ...) with upstream's attribute layout. We
recreate those classes as empty nn.Module subclasses registered under upstream's module names
while saving, and rebuild upstream's module tree from one of our models, so the pickle names the
same globals and holds the same state a real checkpoint does.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from facedet_nn import blocks
from facedet_nn.model import YoloFace
from torch import nn


def _module_class(module: str, name: str) -> type[nn.Module]:
    cls = type(name, (nn.Module,), {"__module__": module, "__qualname__": name})
    return cls


COMMON = ("Conv", "StemBlock", "ShuffleV2Block", "C3", "Bottleneck", "SPP", "SPPF", "Focus", "Concat")
CLASSES: dict[str, type[nn.Module]] = {name: _module_class("models.common", name) for name in COMMON}
CLASSES["Detect"] = _module_class("models.yolo", "Detect")
CLASSES["Model"] = _module_class("models.yolo", "Model")


@contextlib.contextmanager
def upstream_modules() -> Iterator[None]:
    """Make `models.common` / `models.yolo` importable while pickling, as upstream's repo is."""
    fake = {
        "models": types.ModuleType("models"),
        "models.common": types.ModuleType("models.common"),
        "models.yolo": types.ModuleType("models.yolo"),
    }
    for name, cls in CLASSES.items():
        setattr(fake[cls.__module__], name, cls)
    saved = {k: sys.modules.get(k) for k in fake}
    sys.modules.update(fake)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def _new(name: str, **children: Any) -> nn.Module:
    module = CLASSES[name]()
    for key, value in children.items():
        setattr(module, key, value)
    return module


def _conv(unit: blocks.Conv, fuse: bool) -> nn.Module:
    unit = copy.deepcopy(unit)
    if fuse:
        # Upstream's Model.fuse(): conv gets the folded bias, the `bn` attribute is deleted.
        unit.fuse()
        return _new("Conv", conv=unit.conv, act=unit.act)
    return _new("Conv", conv=unit.conv, bn=unit.bn, act=unit.act)


def _bare(unit: blocks.Conv) -> list[nn.Module]:
    unit = copy.deepcopy(unit)
    parts: list[nn.Module] = [unit.conv, unit.bn]
    if isinstance(unit.act, nn.SiLU):
        parts.append(nn.SiLU())
    return parts


def to_upstream(module: nn.Module, fuse: bool = False) -> nn.Module:
    """Our block -> the same block in upstream's classes and attribute layout."""
    if isinstance(module, blocks.Conv):
        return _conv(module, fuse)
    if isinstance(module, blocks.StemBlock):
        return _new(
            "StemBlock",
            stem_1=_conv(module.stem_1, fuse),
            stem_2a=_conv(module.stem_2a, fuse),
            stem_2b=_conv(module.stem_2b, fuse),
            stem_2p=nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True),
            stem_3=_conv(module.stem_3, fuse),
        )
    if isinstance(module, blocks.ShuffleV2Block):
        # Upstream's fuse() only touches Conv modules: these bare pairs keep their batch norm.
        branch1 = nn.Sequential()
        if module.branch1 is not None:
            dw, pw = module.branch1
            branch1 = nn.Sequential(*_bare(dw), *_bare(pw))  # type: ignore[arg-type]
        branch2 = nn.Sequential(*(part for unit in module.branch2 for part in _bare(unit)))  # type: ignore[arg-type]
        return _new("ShuffleV2Block", stride=module.stride, branch1=branch1, branch2=branch2)
    if isinstance(module, blocks.Bottleneck):
        return _new("Bottleneck", cv1=_conv(module.cv1, fuse), cv2=_conv(module.cv2, fuse), add=module.add)
    if isinstance(module, blocks.C3):
        return _new(
            "C3",
            cv1=_conv(module.cv1, fuse),
            cv2=_conv(module.cv2, fuse),
            cv3=_conv(module.cv3, fuse),
            m=nn.Sequential(*(to_upstream(b, fuse) for b in module.m)),
        )
    if isinstance(module, blocks.SPP):
        return _new(
            "SPP", cv1=_conv(module.cv1, fuse), cv2=_conv(module.cv2, fuse), m=copy.deepcopy(module.m)
        )
    if isinstance(module, blocks.SPPF):
        return _new(
            "SPPF", cv1=_conv(module.cv1, fuse), cv2=_conv(module.cv2, fuse), m=copy.deepcopy(module.m)
        )
    if isinstance(module, blocks.Focus):
        return _new("Focus", conv=_conv(module.conv, fuse))
    if isinstance(module, blocks.Concat):
        return _new("Concat", d=module.d)
    if isinstance(module, nn.Sequential):
        return nn.Sequential(*(to_upstream(m, fuse) for m in module))
    if isinstance(module, nn.Upsample):
        return nn.Upsample(scale_factor=module.scale_factor, mode=module.mode)
    raise TypeError(f"no upstream form for {type(module).__name__}")


def upstream_model(model: YoloFace, fuse: bool = False) -> nn.Module:
    """An upstream `models.yolo.Model` holding `model`'s weights (unfused `model` expected)."""
    layers = [to_upstream(layer, fuse) for layer in list(model.model)[:-1]]
    head = model.detect
    strides = torch.tensor(model.strides, dtype=torch.float32)
    anchors = torch.tensor([[list(a) for a in level] for level in model.anchors], dtype=torch.float32)
    detect = _new(
        "Detect",
        nc=model.num_classes,
        no=head.no,
        nl=len(model.strides),
        na=head.na,
        grid=[torch.zeros(1)] * len(model.strides),
        m=copy.deepcopy(head.m),
        stride=strides,
    )
    detect.register_buffer("anchors", anchors / strides.view(-1, 1, 1))
    detect.register_buffer("anchor_grid", anchors.clone().view(len(model.strides), 1, -1, 1, 1, 2))
    layers.append(detect)
    for i, (layer, src) in enumerate(zip(layers, model.sources, strict=True)):
        layer.i, layer.f, layer.type, layer.np = i, src, type(layer).__name__, 0  # type: ignore[assignment]
    yaml = model.config.to_dict()
    yaml["ch"] = 3
    return _new(
        "Model",
        yaml=yaml,
        model=nn.Sequential(*layers),
        save=sorted(model._keep),
        names=["face"],
        stride=strides,
    )


def write_checkpoint(
    model: YoloFace, path: Path, *, half: bool = True, fuse: bool = False, key: str = "model"
) -> Path:
    """torch.save what upstream's train.py + strip_optimizer leave: fp16 model, no optimizer, a
    numpy best_fitness (so the file names numpy globals too, as real ones do)."""
    upstream = upstream_model(model, fuse)
    if half:
        upstream = upstream.half()
    ckpt: dict[str, Any] = {
        "epoch": -1,
        "best_fitness": np.array([0.61], dtype=np.float64),
        "training_results": None,
        key: upstream,
        "optimizer": None,
        "wandb_id": None,
    }
    with upstream_modules():
        torch.save(ckpt, path)
    return path


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> None:
    """Give every batch norm non-trivial statistics, so folding them is actually exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
