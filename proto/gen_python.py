"""Generate the committed Python API package (clients/python/facedet/v1) from the .proto.

Run with `make proto`. tests/test_proto_fresh.py runs `generate()` into a temporary folder
and fails if the committed files differ, so the .proto and its code cannot drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ["facedet/v1/face_detector.proto"]
DEFAULT_OUT = PROTO_ROOT.parent / "clients" / "python"


def _include_dirs() -> list[str]:
    import google.rpc  # googleapis-common-protos ships google/rpc/status.proto
    import grpc_tools

    googleapis = Path(next(iter(google.rpc.__path__))).parent.parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    return [str(PROTO_ROOT), str(googleapis), str(well_known)]


def generate(out_dir: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto under out_dir."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc"]
    args += [f"-I{d}" for d in _include_dirs()]
    args += [f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"]
    args += [str(PROTO_ROOT / p) for p in PROTO_FILES]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    generated = []
    for proto in PROTO_FILES:
        stem = proto.removesuffix(".proto")
        generated += [out_dir / f"{stem}{suffix}" for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
    return generated


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path.relative_to(out))
