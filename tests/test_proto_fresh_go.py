"""The committed Go API package (clients/go/gen/facedet/v1) must be exactly what proto/gen_go.py
generates from the .proto now; regenerate with `make proto-go` when this fails."""

from __future__ import annotations

from pathlib import Path

from facedet_test_support import REPO
from go_client_support import require_tools
from proto_support import load_generator, stale_files

COMMITTED = REPO / "clients" / "go"


def test_generated_go_code_is_fresh(tmp_path: Path) -> None:
    require_tools("protoc", "protoc-gen-go-grpc", "go")
    generated: list[Path] = load_generator("go").generate(tmp_path)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in generated)
    assert names == [
        "gen/facedet/v1/face_detector.pb.go",
        "gen/facedet/v1/face_detector_grpc.pb.go",
    ], names
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.go"))
    assert written == names, f"the generator wrote files it does not return: {written}"
    stale = stale_files(generated, tmp_path, COMMITTED)
    assert not stale, "generated Go code is stale against the .proto; run `make proto-go`:\n" + "\n".join(
        stale
    )


def test_go_package_is_the_go_module() -> None:
    """The .proto's go_package lies inside the module clients/go/go.mod declares, where the
    generated code is committed (so `import ".../gen/facedet/v1"` resolves)."""
    module = (COMMITTED / "go.mod").read_text().split("\n", 1)[0].removeprefix("module ").strip()
    source = (REPO / "proto" / "facedet" / "v1" / "face_detector.proto").read_text()
    assert f'option go_package = "{module}/gen/facedet/v1;facedetv1";' in source
    assert (COMMITTED / "gen" / "facedet" / "v1" / "face_detector.pb.go").is_file()
    # google.rpc.Status comes from Debian's golang-google-genproto-dev, not a copy of ours.
    assert not list(COMMITTED.rglob("status.pb.go"))
