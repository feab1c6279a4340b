"""How the C++ example client's tests get `build/clients/facedet-cpp`: rebuilt by `make
clients-cpp` where CMake and the Debian packages are present (an up-to-date build takes a
second). Where it cannot be built or found the tests skip, saying why, unless
FACEDET_REQUIRE_CLIENTS=1 (CI sets it): then they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest
from facedet_test_support import REPO

BINARY = REPO / "build" / "clients" / "facedet-cpp"
# What `make clients-cpp` needs to build here without installing anything (it would apt-get the rest).
BUILD_TOOLS = ("make", "cmake", "g++")
BUILD_PACKAGES = ("libgrpc++-dev", "libprotobuf-dev", "pkg-config")


def _required() -> bool:
    return os.environ.get("FACEDET_REQUIRE_CLIENTS") == "1"


def _unavailable(why: str) -> NoReturn:
    if _required():
        pytest.fail(f"facedet-cpp is required (FACEDET_REQUIRE_CLIENTS=1): {why}", pytrace=False)
    pytest.skip(why)


def _can_build() -> bool:
    if any(shutil.which(tool) is None for tool in (*BUILD_TOOLS, "dpkg")):
        return False
    return all(
        subprocess.run(["dpkg", "-s", p], capture_output=True, check=False).returncode == 0
        for p in BUILD_PACKAGES
    )


def build_client() -> Path:
    """The built binary: rebuilt first where the toolchain is here (or, where the clients are
    required, by `make clients-cpp` installing what is missing), so the tests never run a stale
    one."""
    if _can_build() or (_required() and shutil.which("make")):
        build = subprocess.run(
            ["make", "-s", "clients-cpp"], cwd=REPO, capture_output=True, text=True, timeout=1200, check=False
        )
        assert build.returncode == 0, (
            f"make clients-cpp failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
        )
    if not BINARY.is_file():
        _unavailable(
            f"{BINARY.relative_to(REPO)} is not built and cannot be built here (run `make clients-cpp`)"
        )
    return BINARY
