"""The pytest fixtures; what they are built from (`Server`, the paths, the helpers) is in
facedet_test_support.py, which test modules import directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_test_support import MODEL, SHARED, Server, ServerFactory, image_bytes, require


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require(SHARED, "shared data folder")


@pytest.fixture(scope="session")
def model_path() -> Path:
    return require(MODEL, "model file")


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    """Every shared sample image by file name."""
    return {name: image_bytes(name) for name in ("zidane.jpg", "sample.jpg", "bus.jpg", "1.jpg", "test.jpg")}


def _factory(log_dir: Path) -> tuple[ServerFactory, list[Server]]:
    started: list[Server] = []

    def make(*args: str, start: bool = True, **kwargs: Any) -> Server:
        kwargs.setdefault("name", f"server{len(started)}")
        server = Server(log_dir, *args, **kwargs)
        started.append(server)
        if start:
            server.start()
        return server

    return make, started


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """start_server(*flags, tcp=, unix=, model=, env=, start=) -> a Server stopped after the test."""
    make, started = _factory(tmp_path)
    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Like start_server, but the servers live until the end of the test module."""
    make, started = _factory(tmp_path_factory.mktemp("servers"))
    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Server]:
    """One default server (TCP and unix socket) shared by every test that does not need its own."""
    with Server(tmp_path_factory.mktemp("session-server"), model=model_path, name="session") as running:
        yield running


@pytest.fixture
def stub(server: Server) -> Iterator[pb_grpc.FaceDetectorStub]:
    with server.stub() as s:
        yield s
