"""Weights files -> the decoding network the torch runtime serves, and its `ModelSpec`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from facedet_server.model.files import sha256_of
from facedet_server.model.network import describe_source, network_spec
from facedet_server.model.spec import ModelSpec

if TYPE_CHECKING:
    from facedet_nn.model import DecodedYoloFace, YoloFace


def load_network(path: Path, config_name: str | None = None) -> YoloFace:
    """Our fused float32 network from any weights file we read; an export of ours brings back
    the config it records (anchors a training run may have changed included)."""
    from facedet_nn.configs import ModelConfig
    from facedet_nn.loading import is_checkpoint, is_ncnn_param, load_weights

    from facedet_server.model.onnx_metadata import read_spec

    path = Path(path)
    config = None
    if config_name is None and path.is_file() and not (is_checkpoint(path) or is_ncnn_param(path)):
        spec = read_spec(path)
        if spec is not None and "config" in spec.extra:
            config = ModelConfig.from_dict(json.loads(spec.extra["config"]), spec.name)
    return load_weights(path, config_name, config)


def load_inference_model(path: Path, config_name: str | None = None) -> tuple[DecodedYoloFace, ModelSpec]:
    """The decoding module ((N, 3, H, W) images -> (N, K, 15) candidates, eval mode) and the spec
    an export of it would carry."""
    from facedet_nn.model import DecodedYoloFace

    model = load_network(path, config_name)
    sha = sha256_of(path)
    spec = network_spec(model, source=describe_source(Path(path), sha), source_sha256=sha)
    return DecodedYoloFace(model).eval(), spec
