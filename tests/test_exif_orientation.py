"""EXIF orientation through a real server: a photo stored in each of the eight orientations is
detected as the upright photo (size, faces and landmarks in its pixels), and with
`ignore_exif_orientation` in its pixels as stored. The GPU decode path has the same test in
tests/gpu/test_exif_gpu.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from exif_photos import stored_jpeg
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_test_support import CHANNEL_OPTIONS, Server, image_bytes

# A box corner may move by a pixel or two: each orientation re-encodes turned pixels.
TOLERANCE_PX = 4.0


def faces_array(response: pb.DetectFacesResponse) -> np.ndarray:
    rows = []
    for f in response.faces:
        lm = f.landmarks
        points = [lm.left_eye, lm.right_eye, lm.nose, lm.mouth_left, lm.mouth_right]
        xy = [c for p in points for c in (p.x, p.y)]
        rows.append([f.box.x_min, f.box.y_min, f.box.x_max, f.box.y_max, *xy])
    return np.asarray(sorted(rows), np.float64)


@pytest.fixture(scope="module")
def stub(server: Server) -> pb_grpc.FaceDetectorStub:
    channel = grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS)
    return pb_grpc.FaceDetectorStub(channel)


@pytest.mark.parametrize("name", ["zidane.jpg", "bus.jpg"])
@pytest.mark.parametrize("orientation", range(2, 9))
def test_detected_in_the_upright_photo(stub: pb_grpc.FaceDetectorStub, name: str, orientation: int) -> None:
    upright = image_bytes(name)
    reference = stub.DetectFaces(pb.DetectFacesRequest(encoded=stored_jpeg(upright, 1)), timeout=30)
    turned = stub.DetectFaces(pb.DetectFacesRequest(encoded=stored_jpeg(upright, orientation)), timeout=30)
    assert (turned.image_width, turned.image_height) == (reference.image_width, reference.image_height)
    ours, theirs = faces_array(turned), faces_array(reference)
    assert ours.shape == theirs.shape and len(ours) > 0, (len(ours), len(theirs))
    assert float(np.abs(ours - theirs).max()) <= TOLERANCE_PX


@pytest.mark.parametrize("orientation", [6, 8])
def test_ignoring_it_detects_in_the_stored_pixels(stub: pb_grpc.FaceDetectorStub, orientation: int) -> None:
    data = stored_jpeg(image_bytes("zidane.jpg"), orientation)
    options = pb.DetectionOptions(ignore_exif_orientation=True)
    response = stub.DetectFaces(pb.DetectFacesRequest(encoded=data, options=options), timeout=30)
    assert (response.image_width, response.image_height) == (720, 1280)
    upright = stub.DetectFaces(pb.DetectFacesRequest(encoded=data), timeout=30)
    assert (upright.image_width, upright.image_height) == (1280, 720)
    # Faces lying on their side are found less often, but any found is where an upright one is,
    # turned back into stored pixels.
    width = upright.image_width
    height = upright.image_height

    def stored_xy(x: float, y: float) -> tuple[float, float]:
        return (y, width - x) if orientation == 6 else (height - y, x)

    def centre(box: pb.BoundingBox) -> tuple[float, float]:
        return (box.x_min + box.x_max) / 2, (box.y_min + box.y_max) / 2

    expected = np.asarray([stored_xy(*centre(f.box)) for f in upright.faces])
    for face in response.faces:
        distance = np.hypot(*(expected - np.asarray(centre(face.box))).T).min()
        assert distance < 40.0, (centre(face.box), expected)


def test_stream_frames_are_turned_too(stub: pb_grpc.FaceDetectorStub) -> None:
    upright = image_bytes("zidane.jpg")
    frames = [pb.DetectFacesRequest(encoded=stored_jpeg(upright, o), frame_id=o) for o in (1, 6, 3, 8)]
    responses = list(stub.StreamDetectFaces(iter(frames), timeout=60))
    assert [r.frame_id for r in responses] == [1, 6, 3, 8]
    assert {(r.image_width, r.image_height) for r in responses} == {(1280, 720)}
    assert len({len(r.faces) for r in responses}) == 1


def test_the_python_client_and_cli_pass_the_option(server: Server, tmp_path: Path) -> None:
    from facedet.client import DetectionOptions, FaceDetectorClient

    photo = tmp_path / "portrait.jpg"
    photo.write_bytes(stored_jpeg(image_bytes("zidane.jpg"), 6))
    with FaceDetectorClient(server.target) as client:
        upright = client.detect(photo)
        assert (upright.image_width, upright.image_height) == (1280, 720)
        stored = client.detect(photo, options=DetectionOptions(ignore_exif_orientation=True))
        assert (stored.image_width, stored.image_height) == (720, 1280)
    cli = [sys.executable, "-m", "facedet.cli", "detect", str(photo), "--server", server.target, "--json"]
    for flags, size in (([], (1280, 720)), (["--ignore-exif-orientation"], (720, 1280))):
        line = json.loads(subprocess.run(cli + flags, capture_output=True, text=True, check=True).stdout)
        assert (line["image_width"], line["image_height"]) == size
