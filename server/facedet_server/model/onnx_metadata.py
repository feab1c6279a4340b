"""The ModelSpec an ONNX file carries, read without torch (the pull cache checks it on every call)."""

from __future__ import annotations

from pathlib import Path

from facedet_server.model.spec import ModelSpec


def read_spec(path: Path) -> ModelSpec | None:
    """The ModelSpec in an ONNX file's metadata, or None for a file without one."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props})
