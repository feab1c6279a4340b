"""The committed C++ stubs (clients/cpp/gen) must be exactly what proto/gen_cpp.py generates from
the .proto now; regenerate with `make proto-cpp` (or `make proto`) when this fails.

gen_cpp.py runs Debian's protoc and grpc_cpp_plugin (the ones matching the libprotobuf the client
is built against); where they are missing this skips, unless FACEDET_REQUIRE_CLIENTS=1 (CI)."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest
from facedet_test_support import REPO
from proto_support import load_generator, stale_files

COMMITTED = REPO / "clients" / "cpp" / "gen"
EXPECTED = [
    "facedet/v1/face_detector.grpc.pb.cc",
    "facedet/v1/face_detector.grpc.pb.h",
    "facedet/v1/face_detector.pb.cc",
    "facedet/v1/face_detector.pb.h",
    "google/rpc/status.pb.cc",
    "google/rpc/status.pb.h",
]


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    module = load_generator("cpp")
    try:
        module.tools()
    except FileNotFoundError as exc:
        if os.environ.get("FACEDET_REQUIRE_CLIENTS") == "1":
            pytest.fail(f"{exc} (FACEDET_REQUIRE_CLIENTS=1; `make clients-cpp` installs it)", pytrace=False)
        pytest.skip(str(exc))
    return module


def test_generated_cpp_is_fresh(generator: ModuleType, tmp_path: Path) -> None:
    generated: list[Path] = generator.generate(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in generated) == EXPECTED
    stale = stale_files(generated, tmp_path, COMMITTED)
    assert not stale, "C++ stubs are stale against the .proto; run `make proto-cpp`:\n" + "\n".join(stale)


def test_no_leftover_committed_files() -> None:
    """A file in gen/ that the generator no longer writes (a renamed or removed .proto) is stale too."""
    present = sorted(str(p.relative_to(COMMITTED)) for p in COMMITTED.rglob("*") if p.is_file())
    assert present == EXPECTED
