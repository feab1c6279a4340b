"""Generate the committed C++ stubs (clients/cpp/gen) from the .proto.

Run with `make proto` (or `python proto/gen_cpp.py [OUT]`). tests/test_proto_fresh_cpp.py runs
`generate()` into a temporary folder and fails if the committed files differ.

It runs Debian's `protoc` and `grpc_cpp_plugin` (packages protobuf-compiler and
protobuf-compiler-grpc), not grpcio-tools' bundled protoc: generated C++ checks at compile time
that it came from the same protobuf release as the headers it is built against
(libprotobuf-dev 3.21 here), so the compiler must be the one that matches the library.
google/rpc/status.proto is generated too: Debian's libprotobuf ships the well-known types
(google/protobuf/*) but not googleapis' google/rpc.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
THIRD_PARTY = PROTO_ROOT / "third_party"
# (include root, proto path under it, whether it has services)
PROTO_FILES = [
    (PROTO_ROOT, "facedet/v1/face_detector.proto", True),
    (THIRD_PARTY, "google/rpc/status.proto", False),
]
DEFAULT_OUT = PROTO_ROOT.parent / "clients" / "cpp" / "gen"


def tools() -> tuple[str, str]:
    """Paths of protoc and grpc_cpp_plugin; FileNotFoundError names the Debian package missing."""
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_cpp_plugin")
    if protoc is None:
        raise FileNotFoundError("protoc not found (apt-get install protobuf-compiler)")
    if plugin is None:
        raise FileNotFoundError("grpc_cpp_plugin not found (apt-get install protobuf-compiler-grpc)")
    return protoc, plugin


def generate(out_dir: Path) -> list[Path]:
    """Write *.pb.h/.pb.cc for every proto (and *.grpc.pb.h/.grpc.pb.cc for the service) under out_dir."""
    protoc, plugin = tools()
    out_dir.mkdir(parents=True, exist_ok=True)
    generated: list[Path] = []
    for root, proto, has_service in PROTO_FILES:
        args = [protoc, f"-I{root}", f"-I{THIRD_PARTY}", f"--cpp_out={out_dir}"]
        if has_service:
            args += [f"--plugin=protoc-gen-grpc={plugin}", f"--grpc_out={out_dir}"]
        # Relative to its include root, so the generated #include lines are "facedet/v1/...".
        args.append(proto)
        result = subprocess.run(args, cwd=root, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}\n{result.stderr}")
        stem = proto.removesuffix(".proto")
        suffixes = [".pb.h", ".pb.cc"] + ([".grpc.pb.h", ".grpc.pb.cc"] if has_service else [])
        generated += [out_dir / f"{stem}{suffix}" for suffix in suffixes]
    return generated


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path.relative_to(out))
