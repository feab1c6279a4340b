"""What the Go client tests share: whether the Debian Go toolchain is there, and the rule for
when it is not. With FACEDET_REQUIRE_CLIENTS=1 (CI, after `make clients`) a missing tool or a
failed build fails the test; without it (a developer's machine without the Debian packages) the
test is skipped and says why."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest
from facedet_test_support import REPO

BINARY = REPO / "build" / "clients" / "facedet-go"
BUILD_TIMEOUT = 900.0  # a cold Go build cache on a busy 2-core machine takes minutes


def clients_required() -> bool:
    return os.environ.get("FACEDET_REQUIRE_CLIENTS") == "1"


def unavailable(reason: str) -> NoReturn:
    """Fail (FACEDET_REQUIRE_CLIENTS=1) or skip, with `reason`."""
    if clients_required():
        pytest.fail(
            f"{reason} (FACEDET_REQUIRE_CLIENTS=1: the example clients must build here)", pytrace=False
        )
    pytest.skip(
        f"{reason}; `make clients-go` installs and builds it (FACEDET_REQUIRE_CLIENTS=1 makes this fail)"
    )


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not found")


def make(target: str, timeout: float = BUILD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`make TARGET` in the checkout (which apt-get installs Go and the rest where missing);
    the caller decides what a failure means."""
    require_tools("make")
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def build_client() -> Path:
    """The binary, rebuilt first by `make clients-go` so that the tests never run a stale one."""
    build = make("clients-go")
    if build.returncode != 0:
        unavailable(f"`make clients-go` failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    assert BINARY.is_file(), f"make clients-go did not write {BINARY}"
    return BINARY
