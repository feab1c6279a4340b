"""The committed Go API package (clients/go/gen/facedet/v1) must be exactly what proto/gen_go.py
generates from the .proto now; regenerate with `make proto-go` when this fails."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from types import ModuleType

from facedet_test_support import REPO
from go_client_support import require_tools

COMMITTED = REPO / "clients" / "go"


def load_generator() -> ModuleType:
    path = REPO / "proto" / "gen_go.py"
    spec = importlib.util.spec_from_file_location("facedet_gen_go", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_go_code_is_fresh(tmp_path: Path) -> None:
    require_tools("protoc", "protoc-gen-go-grpc", "go")
    generated: list[Path] = load_generator().generate(tmp_path)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in generated)
    assert names == [
        "gen/facedet/v1/face_detector.pb.go",
        "gen/facedet/v1/face_detector_grpc.pb.go",
    ], names
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.go"))
    assert written == names, f"the generator wrote files it does not return: {written}"
    stale = []
    for path in generated:
        relative = path.relative_to(tmp_path)
        committed = COMMITTED / relative
        if not committed.is_file():
            stale.append(f"{relative}: not committed")
            continue
        fresh_text, old_text = path.read_text(), committed.read_text()
        if fresh_text != old_text:
            lines = difflib.unified_diff(
                old_text.splitlines(True),
                fresh_text.splitlines(True),
                f"committed/{relative}",
                f"fresh/{relative}",
            )
            stale.append(f"{relative} differs:\n{''.join(list(lines)[:40])}")
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
