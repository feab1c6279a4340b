"""Weights files -> our model: upstream ONNX exports, our own exports, upstream checkpoints."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from facedet_server.model_spec import ModelSpec
from facedet_server.modelfiles import sha256_of

from facedet_converter.configs import ModelConfig, get_config
from facedet_converter.model import DecodedYoloFace, YoloFace


def is_checkpoint(path: Path) -> bool:
    """torch checkpoints are zip files; ONNX files are protobuf."""
    return Path(path).suffix.lower() in (".pt", ".pth", ".ckpt") or zipfile.is_zipfile(path)


def load_weights(path: Path, config_name: str | None = None) -> YoloFace:
    """Our fused float32 model from an ONNX export (upstream's or ours) or an upstream training
    checkpoint. `config_name` forces a built-in config instead of recognising one."""
    from facedet_converter.checkpoint import import_checkpoint
    from facedet_converter.onnx_import import import_onnx
    from facedet_converter.onnx_metadata import read_spec

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if is_checkpoint(path):
        return import_checkpoint(path, config_name)
    config: ModelConfig | None = get_config(config_name) if config_name else None
    spec = read_spec(path)
    if config is None and spec is not None and "config" in spec.extra:
        # Our own export records its config, including anchors a training run may have changed.
        config = ModelConfig.from_dict(json.loads(spec.extra["config"]), spec.name)
    return import_onnx(path, config)


def load_inference_model(path: Path, config_name: str | None = None) -> tuple[DecodedYoloFace, ModelSpec]:
    """The decoding module ((N, 3, H, W) images -> (N, K, 15) candidates, eval mode) and the spec
    an export of it would carry; used by the server's torch backend."""
    from facedet_converter.export import describe_source, model_spec

    model = load_weights(path, config_name)
    sha = sha256_of(path)
    spec = model_spec(model, source=describe_source(Path(path), sha), source_sha256=sha)
    return DecodedYoloFace(model).eval(), spec
