"""`facedet models pull --export`: our dynamic-shape ONNX made from a pulled upstream file, once.

The export lands in $FACEDET_HOME/models/exported/ under a name carrying the source's sha256, and
is reused while its metadata says it came from that exact source through this converter version.
"""

from __future__ import annotations

from pathlib import Path

from facedet_server.model.files import exported_path, sha256_of

from facedet_converter import __version__


def is_current(exported: Path, source_sha256: str) -> bool:
    """True when `exported` is a complete export of that source by this converter version."""
    from facedet_server.model.onnx_metadata import read_spec

    if not exported.is_file():
        return False
    try:
        spec = read_spec(exported)
    except Exception:  # a truncated or foreign file is simply re-made
        return False
    return (
        spec is not None
        and spec.source_sha256 == source_sha256
        and spec.extra.get("converter") == f"facedet_converter {__version__}"
    )


def exported_model(source: Path, home: Path | None = None) -> Path:
    """Path of our export of `source` (an upstream ONNX file), converting it on first use."""
    sha = sha256_of(source)
    target = exported_path(source, sha, home)
    if not is_current(target, sha):
        try:
            from facedet_converter.export import export_from_upstream_onnx  # torch: only to convert
        except ImportError as exc:
            raise ImportError(
                f"converting needs the convert extra (missing: {exc.name}): pip install 'facedet[convert]'",
                name=exc.name,
            ) from exc
        export_from_upstream_onnx(Path(source), target)
    return target
