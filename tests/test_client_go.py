"""What only the Go example client (clients/go, `build/clients/facedet-go`) has: its own unit
tests (`make clients-go-test`) and a check of list targets before any call. The command-line
contract it shares with the C++ client is tested in tests/test_example_clients.py.

The binary is built by `make clients-go` at the start (an up-to-date build takes seconds). Where
it cannot be built the tests skip, saying why, unless FACEDET_REQUIRE_CLIENTS=1 (CI sets it):
then they fail.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from facedet_test_support import clean_env
from go_client_support import build_client, make


@pytest.fixture(scope="module")
def go_client() -> Path:
    return build_client()


def test_go_vet_and_unit_tests(go_client: Path) -> None:
    """gofmt, go vet, and the Go tests: target forms, and a call failing with UNAVAILABLE is
    retried (grpc-go 1.33 honours the service config's retryPolicy only with GRPC_GO_RETRY=on,
    which the client sets for itself)."""
    result = make("clients-go-test")
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "ok  \tgithub.com/facedet/facedet/clients/go/facedet" in result.stdout


def test_a_list_address_without_a_port_is_exit_2(go_client: Path) -> None:
    """facedet-go checks every address of an ipv4: list itself, so a missing port is a usage
    error (exit 2) before any call; the C++ client hands the target to gRPC as it is."""
    result = subprocess.run(
        [str(go_client), "detect", "a.jpg", "--server", "ipv4:127.0.0.1"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith("usage: facedet-go"), result.stderr
