"""The CPU image (deploy/docker/Dockerfile), run for real with podman: it serves through a
published port with a read-only root file system, finds the faces a server outside any container
finds, answers its HEALTHCHECK, and on SIGTERM drains and exits 0.

`make container-test` builds the image first and names it in FACEDET_CONTAINER_IMAGE; podman
runs with the project's containers.conf (runc, ulimits under this machine's hard limits)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from facedet.client import Detection, FaceDetectorClient
from facedet_test_support import (
    MODEL,
    REPO,
    Server,
    ServerFactory,
    free_port,
    health_status,
    image_bytes,
    require,
)
from grpc_health.v1 import health_pb2

pytestmark = pytest.mark.container

CONTAINERS_CONF = REPO / "deploy" / "docker" / "containers.conf"
PHOTO = "zidane.jpg"
SERVING_TIMEOUT = 90.0  # seconds from `podman run` to SERVING (model load and warm-up)
STOP_TIMEOUT = 30  # podman stop's wait before SIGKILL: past the server's 10 s grace


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@dataclass
class Container:
    name: str
    target: str  # the published port, on the host

    def logs(self) -> str:
        result = podman("logs", self.name)
        return result.stdout + result.stderr

    def log_events(self) -> list[str]:
        events = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                events.append(str(json.loads(line).get("event")))
        return events

    def state(self, field: str) -> str:
        return podman("inspect", self.name, "--format", "{{.State." + field + "}}").stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    name = os.environ["FACEDET_CONTAINER_IMAGE"]
    podman("image", "exists", name)
    return name


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    """The image run as `docker run` would, plus a read-only root file system: the server must
    write nothing (the model and its dynamic rewrite are in the image)."""
    name = f"facedet-test-{os.getpid()}"
    port = free_port()
    podman("rm", "--force", "--ignore", name)
    podman("run", "--detach", "--name", name, "--read-only", "--publish", f"127.0.0.1:{port}:50051", image)
    try:
        running = Container(name, f"127.0.0.1:{port}")
        _wait_serving(running)
        yield running
    finally:
        podman("rm", "--force", "--ignore", name, timeout=60)


def _wait_serving(container: Container) -> None:
    deadline = time.monotonic() + SERVING_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        if container.state("Running") != "true":
            raise AssertionError(f"container exited {container.state('ExitCode')}:\n{container.logs()}")
        try:
            if health_status(container.target, timeout=1.0) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError as exc:
            last = exc.code()
        time.sleep(0.2)
    raise AssertionError(f"not SERVING within {SERVING_TIMEOUT} s (last: {last}):\n{container.logs()}")


def detect(target: str) -> Detection:
    with FaceDetectorClient(target, timeout=30) as client:
        return client.detect(image_bytes(PHOTO))


def test_image_runs_as_a_numeric_user_with_a_healthcheck_and_no_build_secrets(image: str) -> None:
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    # Only a docker-format image keeps it (podman build --format docker); podman shows it here.
    assert inspected["Healthcheck"]["Test"][:3] == ["CMD", "facedet", "health"]
    assert config["Entrypoint"][:2] == ["/usr/bin/tini", "--"]
    # The host's pip config (a build secret) is not in the image, nor is the host's CA bundle:
    # the image's is the one Debian's ca-certificates made.
    probe = podman(
        "run", "--rm", "--no-healthcheck", "--entrypoint", "sh", image, "-c",
        "test ! -e /etc/pip.conf && echo no-pip-conf; ls /opt/facedet/models /opt/facedet/models/dynamic",
    )
    assert "no-pip-conf" in probe.stdout
    assert "yolov5n-0.5.onnx" in probe.stdout and "dynamic.onnx" in probe.stdout
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_bundle.exists():
        inside = podman("run", "--rm", "--no-healthcheck", "--entrypoint", "cat", image, str(host_bundle))
        assert inside.stdout != host_bundle.read_text(), "the host's CA bundle was baked into the image"


def test_the_container_finds_the_faces_a_server_outside_finds(
    container: Container, start_server: ServerFactory, tmp_path: Path
) -> None:
    # Outside: the same registry model resolved the same way (its dynamic rewrite), from the mirror.
    outside: Server = start_server(
        model=None,
        unix=False,
        env={"FACEDET_MODEL_DIR": str(require(MODEL, "model file").parent), "FACEDET_HOME": str(tmp_path)},
    )
    inside, expected = detect(container.target), detect(outside.target)
    assert (inside.image_width, inside.image_height) == (expected.image_width, expected.image_height)
    assert len(inside.faces) == len(expected.faces) == 2
    for got, want in zip(inside.faces, expected.faces, strict=True):
        assert abs(got.confidence - want.confidence) < 1e-3
        for a, b in zip(
            (got.box.x_min, got.box.y_min, got.box.x_max, got.box.y_max),
            (want.box.x_min, want.box.y_min, want.box.x_max, want.box.y_max),
            strict=True,
        ):
            assert abs(a - b) < 1.0, (inside.faces, expected.faces)
    assert "model_fixed_shape" not in container.log_events(), container.logs()


def test_healthcheck_passes_when_serving(container: Container) -> None:
    result = podman("healthcheck", "run", container.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sigterm_drains_and_exits_0(container: Container) -> None:
    started = time.monotonic()
    podman("stop", "--time", str(STOP_TIMEOUT), container.name, timeout=STOP_TIMEOUT + 30)
    took = time.monotonic() - started
    assert container.state("ExitCode") == "0", container.logs()
    events = container.log_events()
    assert "draining" in events and events[-1] == "stopped", container.logs()
    assert took < STOP_TIMEOUT, f"podman stop took {took:.1f} s: the server did not end on SIGTERM"
