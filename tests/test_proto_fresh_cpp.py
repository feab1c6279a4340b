"""The committed C++ stubs (clients/cpp/gen) must be exactly what proto/gen_cpp.py generates from
the .proto now; regenerate with `make proto-cpp` (or `make proto`) when this fails.

gen_cpp.py runs Debian's protoc and grpc_cpp_plugin (the ones matching the libprotobuf the client
is built against); where they are missing this skips, unless FACEDET_REQUIRE_CLIENTS=1 (CI)."""

from __future__ import annotations

import difflib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
from facedet_test_support import REPO

COMMITTED = REPO / "clients" / "cpp" / "gen"
EXPECTED = [
    "facedet/v1/face_detector.grpc.pb.cc",
    "facedet/v1/face_detector.grpc.pb.h",
    "facedet/v1/face_detector.pb.cc",
    "facedet/v1/face_detector.pb.h",
    "google/rpc/status.pb.cc",
    "google/rpc/status.pb.h",
]


def load_generator() -> ModuleType:
    path = REPO / "proto" / "gen_cpp.py"
    spec = importlib.util.spec_from_file_location("facedet_gen_cpp", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    module = load_generator()
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
            stale.append(f"{relative} differs:\n{''.join(list(lines)[:40])}")
    assert not stale, "C++ stubs are stale against the .proto; run `make proto-cpp`:\n" + "\n".join(stale)


def test_no_leftover_committed_files() -> None:
    """A file in gen/ that the generator no longer writes (a renamed or removed .proto) is stale too."""
    present = sorted(str(p.relative_to(COMMITTED)) for p in COMMITTED.rglob("*") if p.is_file())
    assert present == EXPECTED
