"""Weights files -> our network: upstream ONNX exports, our own exports, upstream checkpoints,
ncnn models (`.param` with its `.bin` beside it)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from facedet_nn.configs import ModelConfig, get_config
from facedet_nn.model import YoloFace


def is_checkpoint(path: Path) -> bool:
    """torch checkpoints are zip files; ONNX files are protobuf."""
    return Path(path).suffix.lower() in (".pt", ".pth", ".ckpt") or zipfile.is_zipfile(path)


def is_ncnn_param(path: Path) -> bool:
    """An ncnn graph is named `.param` (its weights, `.bin`, sit beside it); it is text, not ONNX."""
    return Path(path).suffix.lower() == ".param"


def load_weights(path: Path, config_name: str | None = None, config: ModelConfig | None = None) -> YoloFace:
    """Our fused float32 network from an ONNX export (upstream's or ours), an upstream training
    checkpoint, or an ncnn `.param` (with its `.bin`). `config_name` forces a built-in config
    instead of recognising one; `config` (for ONNX and ncnn files) one the caller read elsewhere,
    such as an export's metadata."""
    from facedet_nn.checkpoint import import_checkpoint
    from facedet_nn.ncnn_weights import import_ncnn
    from facedet_nn.onnx_weights import import_onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if is_checkpoint(path):
        return import_checkpoint(path, config_name)
    if config_name:
        config = get_config(config_name)
    if is_ncnn_param(path):
        return import_ncnn(path, config=config)
    return import_onnx(path, config)
