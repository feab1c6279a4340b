"""The committed Python API package (clients/python/facedet/v1) must be exactly what
proto/gen_python.py generates from the .proto now; regenerate with `make proto` when this fails."""

from __future__ import annotations

import re
from pathlib import Path

from facedet.v1 import face_detector_pb2 as pb
from facedet_test_support import REPO
from proto_support import load_generator, stale_files

COMMITTED = REPO / "clients" / "python"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generated: list[Path] = load_generator("python").generate(tmp_path)
    names = sorted(p.name for p in generated)
    assert names == ["face_detector_pb2.py", "face_detector_pb2.pyi", "face_detector_pb2_grpc.py"], names
    stale = stale_files(generated, tmp_path, COMMITTED)
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
