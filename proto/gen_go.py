"""Generate the committed Go API package (clients/go/gen/facedet/v1) from the .proto.

Run with `make proto-go` (or `python proto/gen_go.py [OUT]`). tests/test_proto_fresh_go.py runs
`generate()` into a temporary folder and fails if the committed files differ.

Everything comes from Debian, offline: protoc (protobuf-compiler), protoc-gen-go-grpc (its own
package), and protoc-gen-go built here from the sources golang-google-protobuf-dev installs
under /usr/share/gocode (the same sources the client is compiled against, so the generated code
and the runtime it calls are one version). google.rpc.Status is not generated: its go_package is
Debian's golang-google-genproto-dev package, which the client imports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO = PROTO_ROOT.parent
PROTO_FILES = ["facedet/v1/face_detector.proto"]
DEFAULT_OUT = REPO / "clients" / "go"
# clients/go/go.mod names this module; go_package paths below it land under OUT.
GO_MODULE = "github.com/facedet/facedet/clients/go"
DEBIAN_GOPATH = Path("/usr/share/gocode")
PROTOC_GEN_GO = "google.golang.org/protobuf/cmd/protoc-gen-go"
# Where the built plugin is kept between runs (ignored by git, like the rest of build/).
TOOLS = REPO / "build" / "tools" / "go"
# protoc's own well-known types (google/protobuf/any.proto, imported by google/rpc/status.proto).
WELL_KNOWN = Path("/usr/include")


class MissingTool(RuntimeError):
    """A Debian package the generator needs is not installed (`make clients-go` installs them)."""


def _which(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise MissingTool(f"{name} not found: install the Debian package {package} (make clients-go does)")
    return found


def go_env() -> dict[str, str]:
    """GOPATH mode against Debian's Go sources: no module download, no network."""
    env = dict(os.environ)
    env.update(GO111MODULE="off", GOPATH=str(DEBIAN_GOPATH), GOPROXY="off", GOFLAGS="", CGO_ENABLED="0")
    env["GOCACHE"] = str(REPO / "build" / "go" / "cache")  # the one clients/go/build.mk uses
    return env


def protoc_gen_go() -> Path:
    """protoc-gen-go built from golang-google-protobuf-dev's sources (rebuilt when they change)."""
    go = _which("go", "golang-go")
    source = DEBIAN_GOPATH / "src" / PROTOC_GEN_GO
    if not source.is_dir():
        raise MissingTool(f"{source} not found: install the Debian package golang-google-protobuf-dev")
    plugin = TOOLS / "protoc-gen-go"
    TOOLS.mkdir(parents=True, exist_ok=True)
    # `go build` is a no-op (a cache hit) when nothing changed, and picks up a package upgrade.
    subprocess.run([go, "build", "-o", str(plugin), PROTOC_GEN_GO], env=go_env(), check=True, cwd=TOOLS)
    return plugin


def generate(out_dir: Path) -> list[Path]:
    """Write *.pb.go and *_grpc.pb.go for every proto under out_dir (the Go module's root)."""
    protoc = _which("protoc", "protobuf-compiler")
    grpc_plugin = _which("protoc-gen-go-grpc", "protoc-gen-go-grpc")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [protoc, f"-I{PROTO_ROOT}", f"-I{PROTO_ROOT / 'third_party'}"]
    if WELL_KNOWN.joinpath("google/protobuf/any.proto").is_file():
        args.append(f"-I{WELL_KNOWN}")
    args += [
        f"--plugin=protoc-gen-go={protoc_gen_go()}",
        f"--plugin=protoc-gen-go-grpc={grpc_plugin}",
        f"--go_out={out_dir}",
        f"--go_opt=module={GO_MODULE}",
        f"--go-grpc_out={out_dir}",
        f"--go-grpc_opt=module={GO_MODULE}",
    ]
    args += PROTO_FILES
    result = subprocess.run(args, cwd=PROTO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed ({' '.join(args)}):\n{result.stderr}")
    package = out_dir / "gen" / "facedet" / "v1"
    return [package / name for name in ("face_detector.pb.go", "face_detector_grpc.pb.go")]


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path.relative_to(out))
