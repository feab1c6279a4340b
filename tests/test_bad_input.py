"""Bad input matrix: each bad request gets the right status and a message naming the problem, and
the same server answers a normal request right after it."""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import numpy as np
import pytest
import simplejpeg
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_test_support import EXPECTED_FACES, Server, ServerFactory, image_bytes

MAX_MESSAGE = 1024 * 1024  # the bad-input server's --max-message-bytes
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def bad_input_server(module_server_factory: ServerFactory) -> Server:
    return module_server_factory("--max-message-bytes", str(MAX_MESSAGE), unix=False, name="bad-input")


@pytest.fixture
def stub(bad_input_server: Server) -> Iterator[pb_grpc.FaceDetectorStub]:
    with bad_input_server.stub() as s:
        yield s


def assert_still_serves(stub: pb_grpc.FaceDetectorStub) -> None:
    response = stub.DetectFaces(
        pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg"), frame_id=1), timeout=30
    )
    assert len(response.faces) == EXPECTED_FACES["zidane.jpg"]
    assert response.frame_id == 1


# --- building bad images ---------------------------------------------------------------------


def small_jpeg(width: int = 64, height: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    return bytes(simplejpeg.encode_jpeg(pixels, quality=90, colorspace="RGB"))


def patch_sof(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF0..SOF2) to claim another size; the pixel data stays small."""
    i = 2
    while i + 4 <= len(jpeg):
        assert jpeg[i] == 0xFF, f"not at a marker at offset {i}"
        marker = jpeg[i + 1]
        (length,) = struct.unpack(">H", jpeg[i + 2 : i + 4])
        if marker in (0xC0, 0xC1, 0xC2):
            # FFCn, length(2), precision(1), height(2), width(2)
            return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9 :]
        i += 2 + length
    raise AssertionError("no SOF marker found")


def png_bytes() -> bytes:
    import cv2

    ok, png = cv2.imencode(".png", np.full((32, 48, 3), 200, np.uint8))
    assert ok
    return png.tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A real small PNG whose IHDR claims another size (its CRC no longer matches)."""
    data = png_bytes()
    assert data[12:16] == b"IHDR"
    return data[:16] + struct.pack(">II", width, height) + data[24:]


def zidane_half() -> bytes:
    data = image_bytes("zidane.jpg")
    return data[: len(data) // 2]


def raw(width: int, height: int, fmt: pb.PixelFormat, size: int | None = None) -> pb.DetectFacesRequest:
    channels = 1 if fmt == pb.PIXEL_FORMAT_GRAY8 else 3
    n = width * height * channels if size is None else size
    return pb.DetectFacesRequest(raw=pb.RawImage(width=width, height=height, format=fmt, data=b"\x80" * n))


def with_options(**options: Any) -> pb.DetectFacesRequest:
    return pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg"), options=pb.DetectionOptions(**options))


@dataclass(frozen=True)
class Case:
    build: Callable[[], pb.DetectFacesRequest]
    code: grpc.StatusCode
    keywords: tuple[str, ...]  # at least one must appear in the status message (case-insensitive)


CASES: dict[str, Case] = {
    "no-image": Case(lambda: pb.DetectFacesRequest(frame_id=3), INVALID, ("no image",)),
    "empty-bytes": Case(lambda: pb.DetectFacesRequest(encoded=b""), INVALID, ("empty",)),
    "random-bytes": Case(
        lambda: pb.DetectFacesRequest(encoded=np.random.default_rng(1).bytes(5000)), INVALID, ("jpeg or png",)
    ),
    "truncated-jpeg": Case(
        lambda: pb.DetectFacesRequest(encoded=zidane_half()), INVALID, ("truncated", "corrupt")
    ),
    "jpeg-magic-then-junk": Case(
        lambda: pb.DetectFacesRequest(encoded=b"\xff\xd8\xff\xe0" + os.urandom(2000)), INVALID, ("jpeg",)
    ),
    "png-magic-then-junk": Case(
        lambda: pb.DetectFacesRequest(encoded=b"\x89PNG\r\n\x1a\n" + b"junk" * 100), INVALID, ("png",)
    ),
    "png-header-then-junk": Case(
        lambda: pb.DetectFacesRequest(encoded=png_bytes()[:33] + b"\x00junk" * 50), INVALID, ("png",)
    ),
    "png-truncated": Case(
        lambda: pb.DetectFacesRequest(encoded=png_bytes()[: len(png_bytes()) // 2]), INVALID, ("png",)
    ),
    "gif-header-then-junk": Case(
        lambda: pb.DetectFacesRequest(encoded=b"GIF89a" + b"\x10\x00\x10\x00" + b"junk" * 50),
        INVALID,
        ("gif",),
    ),
    "jpeg-claims-60000x60000": Case(
        lambda: pb.DetectFacesRequest(encoded=patch_sof(small_jpeg(), 60000, 60000)),
        INVALID,
        ("60000x60000",),
    ),
    "png-claims-60000x60000": Case(
        lambda: pb.DetectFacesRequest(encoded=png_claiming(60000, 60000)), INVALID, ("60000x60000",)
    ),
    "raw-wrong-length": Case(
        lambda: raw(64, 48, pb.PIXEL_FORMAT_RGB8, size=64 * 48 * 3 - 1), INVALID, ("bytes",)
    ),
    "raw-gray-given-rgb-length": Case(
        lambda: raw(64, 48, pb.PIXEL_FORMAT_GRAY8, size=64 * 48 * 3), INVALID, ("bytes",)
    ),
    "raw-zero-width": Case(lambda: raw(0, 48, pb.PIXEL_FORMAT_RGB8, size=0), INVALID, ("zero", "width")),
    "raw-zero-height": Case(lambda: raw(48, 0, pb.PIXEL_FORMAT_RGB8, size=0), INVALID, ("zero", "height")),
    "raw-over-max-pixels": Case(
        lambda: raw(60000, 60000, pb.PIXEL_FORMAT_RGB8, size=300), INVALID, ("limit",)
    ),
    "raw-format-unspecified": Case(
        lambda: raw(64, 48, pb.PIXEL_FORMAT_UNSPECIFIED, size=64 * 48 * 3), INVALID, ("format",)
    ),
    "raw-format-unknown-number": Case(
        lambda: raw(64, 48, cast(pb.PixelFormat, 42), size=64 * 48 * 3), INVALID, ("format",)
    ),
    "over-size-message": Case(
        lambda: pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg") + b"\x00" * (2 * MAX_MESSAGE)),
        EXHAUSTED,
        ("larger", "max", "size"),
    ),
    "negative-min-confidence": Case(lambda: with_options(min_confidence=-0.1), INVALID, ("min_confidence",)),
    "nan-min-confidence": Case(lambda: with_options(min_confidence=math.nan), INVALID, ("min_confidence",)),
    "min-confidence-over-1": Case(lambda: with_options(min_confidence=1.5), INVALID, ("min_confidence",)),
    "negative-iou": Case(lambda: with_options(iou_threshold=-0.5), INVALID, ("iou_threshold",)),
    "nan-iou": Case(lambda: with_options(iou_threshold=math.nan), INVALID, ("iou_threshold",)),
    "negative-min-face-size": Case(lambda: with_options(min_face_size=-1.0), INVALID, ("min_face_size",)),
    "nan-min-face-size": Case(lambda: with_options(min_face_size=math.nan), INVALID, ("min_face_size",)),
    "inf-min-face-size": Case(lambda: with_options(min_face_size=math.inf), INVALID, ("min_face_size",)),
    "max-faces-over-limit": Case(lambda: with_options(max_faces=1001), INVALID, ("max_faces",)),
}


def assert_fails(stub: pb_grpc.FaceDetectorStub, request: pb.DetectFacesRequest, case: Case) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.DetectFaces(request, timeout=30)
    error: Any = info.value
    assert error.code() == case.code, f"{error.code()}: {error.details()}"
    message = error.details() or ""
    assert any(k.lower() in message.lower() for k in case.keywords), (
        f"message {message!r} names none of {case.keywords}"
    )


@pytest.mark.parametrize("case_name", list(CASES))
def test_bad_request_unary(stub: pb_grpc.FaceDetectorStub, case_name: str) -> None:
    case = CASES[case_name]
    assert_fails(stub, case.build(), case)
    assert_still_serves(stub)


@pytest.mark.parametrize("case_name", [n for n, c in CASES.items() if c.code == INVALID])
def test_bad_frame_in_stream(stub: pb_grpc.FaceDetectorStub, case_name: str) -> None:
    """On a stream the same problem is reported in the frame's `error`, and the stream goes on."""
    case = CASES[case_name]
    good = image_bytes("zidane.jpg")
    bad = case.build()
    bad.frame_id = 2
    requests = [
        pb.DetectFacesRequest(encoded=good, frame_id=1),
        bad,
        pb.DetectFacesRequest(encoded=good, frame_id=3),
    ]
    responses = list(stub.StreamDetectFaces(iter(requests), timeout=30))
    assert [r.frame_id for r in responses] == [1, 2, 3]
    assert responses[1].error.code == case.code.value[0]
    assert any(k.lower() in responses[1].error.message.lower() for k in case.keywords), responses[
        1
    ].error.message
    for r in (responses[0], responses[2]):
        assert not r.HasField("error")
        assert len(r.faces) == EXPECTED_FACES["zidane.jpg"]


def test_over_size_frame_ends_stream_with_resource_exhausted(stub: pb_grpc.FaceDetectorStub) -> None:
    """An over-size message cannot be read, so it fails the stream itself; frames before it are
    still answered."""
    good = image_bytes("zidane.jpg")
    requests = [
        pb.DetectFacesRequest(encoded=good, frame_id=1),
        pb.DetectFacesRequest(encoded=good + b"\x00" * (2 * MAX_MESSAGE), frame_id=2),
    ]
    answered: list[pb.DetectFacesResponse] = []
    with pytest.raises(grpc.RpcError) as info:
        for response in stub.StreamDetectFaces(iter(requests), timeout=30):
            answered.append(response)
    error: Any = info.value
    assert error.code() == EXHAUSTED, f"{error.code()}: {error.details()}"
    assert error.details()
    assert [r.frame_id for r in answered] in ([], [1])
    assert_still_serves(stub)


def test_sof_patch_really_claims_the_size() -> None:
    """The 60000x60000 case is only meaningful if the patched header parses to that size."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(patch_sof(small_jpeg(), 60000, 60000))
    assert (width, height) == (60000, 60000)


def test_truncated_jpeg_is_rejected_by_strict_decoder() -> None:
    """libjpeg would decode the first half with a warning; strict decoding must refuse it."""
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(zidane_half(), strict=True)


# --- queue overload --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_queue_overload_gets_resource_exhausted(start_server: ServerFactory) -> None:
    server = start_server("--max-queue", "1", "--max-batch", "1", unix=False)
    data = image_bytes("test.jpg")
    with server.stub() as stub:
        futures = [
            stub.DetectFaces.future(pb.DetectFacesRequest(encoded=data, frame_id=i), timeout=60)
            for i in range(40)
        ]
        ok: list[pb.DetectFacesResponse] = []
        refused: list[Any] = []
        other: list[Any] = []
        for f in futures:
            try:
                ok.append(f.result())
            except grpc.RpcError as exc:
                error: Any = exc
                (refused if error.code() == EXHAUSTED else other).append(error)
        assert not other, [(e.code(), e.details()) for e in other]
        assert refused, "40 concurrent requests with --max-queue 1 were all accepted"
        assert ok, "every request was refused"
        for error in refused:
            assert "overload" in error.details().lower() or "queue" in error.details().lower(), (
                error.details()
            )
        counts = {len(r.faces) for r in ok}
        assert len(counts) == 1, f"the same photo gave different face counts: {counts}"
        assert_still_serves(stub)
