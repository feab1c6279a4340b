"""What `facedet serve` runs with no --model: the upstream yolov5n-0.5 made dynamic with the
onnx package (any batch, the rectangular letterbox), made once into the cache; the frozen file
where that cannot be had, saying why."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest
import simplejpeg
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_server.model.files import DEFAULT_MODEL, REGISTRY, dynamic_path, resolve_model
from facedet_server.model.onnx_metadata import read_spec
from facedet_test_support import CHANNEL_OPTIONS, EXPECTED_FACES, MODEL, ServerFactory, image_bytes
from structlog.testing import capture_logs

ENTRY = REGISTRY[DEFAULT_MODEL]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACEDET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEDET_MODEL_DIR", str(MODEL.parent))
    monkeypatch.delenv("FACEDET_MODEL", raising=False)
    return tmp_path / "home"


def test_the_default_is_the_dynamic_rewrite_made_once(home: Path) -> None:
    path = resolve_model(None)
    assert path == dynamic_path(MODEL, ENTRY.sha256, home)
    spec = read_spec(path)
    assert spec is not None and spec.dynamic_shape and spec.dynamic_batch
    assert spec.source_sha256 == ENTRY.sha256
    made = path.stat().st_mtime_ns
    assert resolve_model(DEFAULT_MODEL) == path
    assert path.stat().st_mtime_ns == made  # reused, not made again


def test_a_damaged_rewrite_is_made_again(home: Path) -> None:
    path = resolve_model(None)
    path.write_bytes(b"not an onnx file")
    assert resolve_model(None) == path
    spec = read_spec(path)
    assert spec is not None and spec.dynamic_shape


def test_an_explicit_file_is_served_as_it_is(home: Path) -> None:
    assert resolve_model(str(MODEL)) == MODEL


def test_without_onnx_the_frozen_file_is_served_and_the_reason_logged(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # as where the package is not installed
    with capture_logs() as logs:
        assert resolve_model(None) == MODEL.parent / ENTRY.filename
    (warning,) = [entry for entry in logs if entry["event"] == "model_fixed_shape"]
    assert "pip install onnx" in warning["reason"]


def test_served_by_default_on_rectangular_inputs(start_server: ServerFactory, tmp_path: Path) -> None:
    env = {"FACEDET_HOME": str(tmp_path / "home"), "FACEDET_MODEL_DIR": str(MODEL.parent)}
    server = start_server(model=None, env=env, unix=False)
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FaceDetectorStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.name == "yolov5n-0.5"
        for name, count in EXPECTED_FACES.items():
            data = image_bytes(name)
            response = stub.DetectFaces(pb.DetectFacesRequest(encoded=data), timeout=30)
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            assert (response.image_width, response.image_height) == (width, height)
            assert len(response.faces) == count, name
    log = server.log_path.read_text()
    assert "dynamic" in log and "model_fixed_shape" not in log
