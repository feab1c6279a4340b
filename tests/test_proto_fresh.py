"""The committed Python API package (clients/python/facedet/v1) must be exactly what
proto/gen_python.py generates from the .proto now; regenerate with `make proto` when this fails."""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

from facedet.v1 import face_detector_pb2 as pb
from facedet_test_support import REPO

COMMITTED = REPO / "clients" / "python"


def load_generator() -> ModuleType:
    path = REPO / "proto" / "gen_python.py"
    spec = importlib.util.spec_from_file_location("facedet_gen_python", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generated: list[Path] = load_generator().generate(tmp_path)
    names = sorted(p.name for p in generated)
    assert names == ["face_detector_pb2.py", "face_detector_pb2.pyi", "face_detector_pb2_grpc.py"], names
    stale = []
    for path in generated:
        relative = path.relative_to(tmp_path)
        committed = COMMITTED / relative
        assert path.is_file(), f"generator did not write {relative}"
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
            diff = "".join(list(lines)[:40])
            stale.append(f"{relative} differs:\n{diff}")
    assert not stale, "generated code is stale against the .proto; run `make proto`:\n" + "\n".join(stale)


def test_committed_package_is_the_one_imported() -> None:
    """The tests and the server import the committed code, not some other installed copy."""
    assert Path(pb.__file__).resolve() == (COMMITTED / "facedet" / "v1" / "face_detector_pb2.py").resolve()
    assert (COMMITTED / "facedet" / "v1" / "__init__.py").is_file()


def test_descriptor_matches_proto_source() -> None:
    """Cheap cross-check that does not need grpcio-tools: every message and RPC named in the .proto
    is in the imported descriptor, and no other."""
    source = (REPO / "proto" / "facedet" / "v1" / "face_detector.proto").read_text()
    messages = set(re.findall(r"^message (\w+) \{", source, re.M))
    enums = set(re.findall(r"^enum (\w+) \{", source, re.M))
    rpcs = set(re.findall(r"^\s*rpc (\w+)\(", source, re.M))
    assert messages == set(pb.DESCRIPTOR.message_types_by_name)
    assert enums == set(pb.DESCRIPTOR.enum_types_by_name)
    assert rpcs == {m.name for m in pb.DESCRIPTOR.services_by_name["FaceDetector"].methods}
