"""Bad input matrix: each bad request gets the right status and a message naming the problem, and
the same server answers a normal request right after it."""

from __future__ import annotations

import contextlib
import json
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
from facedet_server.transport.grpc.servicer import core_receive_limit, oversize_bytes
from facedet_test_support import EXPECTED_FACES, Server, ServerFactory, image_bytes, wait_for

MAX_MESSAGE = 1024 * 1024  # the bad-input server's --max-message-bytes
CORE_LIMIT = 2 * MAX_MESSAGE  # what gRPC core itself accepts there (core_receive_limit)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def bad_input_server(module_server_factory: ServerFactory) -> Server:
    return module_server_factory(
        "--max-message-bytes", str(MAX_MESSAGE), "--summary-interval", "0.5", unix=False, name="bad-input"
    )


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


def over_limit() -> bytes:
    """An image a little over --max-message-bytes, within the core's margin: the servicer refuses it."""
    return image_bytes("zidane.jpg") + b"\x00" * MAX_MESSAGE


def over_core_limit() -> bytes:
    """Far over the margin too: gRPC core refuses it from its length prefix, unread."""
    return b"\x00" * (2 * CORE_LIMIT)


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
        lambda: pb.DetectFacesRequest(encoded=over_limit()),
        EXHAUSTED,
        (f"--max-message-bytes {MAX_MESSAGE}",),
    ),
    "over-core-size-message": Case(
        lambda: pb.DetectFacesRequest(encoded=over_core_limit()), EXHAUSTED, ("larger than max",)
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


# --- over --max-message-bytes -----------------------------------------------------------------


def records_since(server: Server, start: int, event: str) -> list[dict[str, Any]]:
    """The `event` records among log lines `start` on; the bad images make OpenCV write its own
    (not JSON) warnings into the same stderr, which this skips."""
    records = []
    for line in server.log_lines()[start:]:
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if record.get("event") == event:
                records.append(record)
    return records


def settled_log(server: Server) -> int:
    """How many log lines there are once a summary line has been written after the calls so far
    (each takes and resets the counters): summaries past that index count only later calls."""
    start = len(server.log_lines())
    wait_for(lambda: bool(records_since(server, start, "summary")), 10, "a summary")
    return len(server.log_lines())


def exhausted_counted(server: Server, start: int) -> int:
    return sum(r["failed"].get("RESOURCE_EXHAUSTED", 0) for r in records_since(server, start, "summary"))


def test_over_size_call_is_logged_and_counted(
    bad_input_server: Server, stub: pb_grpc.FaceDetectorStub
) -> None:
    """Refused with the limit named, a warning names call, size, limit and peer, the summary
    counts it, and calls in flight beside it are answered."""
    start = settled_log(bad_input_server)
    good = pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg"), frame_id=7)
    beside = [stub.DetectFaces.future(good, timeout=30) for _ in range(4)]
    request = pb.DetectFacesRequest(encoded=over_limit(), frame_id=9)
    with pytest.raises(grpc.RpcError) as info:
        stub.DetectFaces(request, timeout=30)
    error: Any = info.value
    assert error.code() == EXHAUSTED, f"{error.code()}: {error.details()}"
    assert str(MAX_MESSAGE) in error.details() and str(request.ByteSize()) in error.details(), error.details()
    for future in beside:
        assert len(future.result().faces) == EXPECTED_FACES["zidane.jpg"]

    (warning,) = records_since(bad_input_server, start, "message_too_large")
    assert warning["level"] == "warning"
    assert warning["rpc"] == "DetectFaces" and warning["frame_id"] == 9
    assert (warning["bytes"], warning["limit"]) == (request.ByteSize(), MAX_MESSAGE)
    assert warning["peer"].startswith("ipv4:127.0.0.1:")
    wait_for(lambda: exhausted_counted(bad_input_server, start) >= 1, 10, "a summary counting it")
    assert exhausted_counted(bad_input_server, start) == 1
    assert_still_serves(stub)


def test_over_size_frame_is_refused_and_the_stream_goes_on(
    bad_input_server: Server, stub: pb_grpc.FaceDetectorStub
) -> None:
    start = settled_log(bad_input_server)
    good = image_bytes("zidane.jpg")
    requests = [
        pb.DetectFacesRequest(encoded=good, frame_id=1),
        pb.DetectFacesRequest(encoded=over_limit(), frame_id=2),
        pb.DetectFacesRequest(encoded=good, frame_id=3),
    ]
    responses = list(stub.StreamDetectFaces(iter(requests), timeout=30))
    assert [r.frame_id for r in responses] == [1, 2, 3]
    assert responses[1].error.code == EXHAUSTED.value[0]
    assert f"--max-message-bytes {MAX_MESSAGE}" in responses[1].error.message, responses[1].error.message
    for r in (responses[0], responses[2]):
        assert not r.HasField("error")
        assert len(r.faces) == EXPECTED_FACES["zidane.jpg"]

    (warning,) = records_since(bad_input_server, start, "message_too_large")
    assert warning["rpc"] == "StreamDetectFaces" and warning["frame_id"] == 2
    assert (warning["bytes"], warning["limit"]) == (requests[1].ByteSize(), MAX_MESSAGE)
    wait_for(lambda: exhausted_counted(bad_input_server, start) >= 1, 10, "a summary counting it")
    assert exhausted_counted(bad_input_server, start) == 1


def test_over_core_limit_call_is_cut_by_grpc_unread(
    bad_input_server: Server, stub: pb_grpc.FaceDetectorStub
) -> None:
    """Memory stays bounded: a message over the core's margin never reaches our code, so it
    is neither logged nor counted (no hook sees it; the README says so)."""
    start = len(bad_input_server.log_lines())
    with pytest.raises(grpc.RpcError) as info:
        stub.DetectFaces(pb.DetectFacesRequest(encoded=over_core_limit()), timeout=30)
    error: Any = info.value
    assert error.code() == EXHAUSTED, f"{error.code()}: {error.details()}"
    assert f"vs. {CORE_LIMIT})" in error.details(), error.details()
    assert_still_serves(stub)
    assert not records_since(bad_input_server, start, "message_too_large")


def test_over_core_limit_frame_ends_stream_with_resource_exhausted(stub: pb_grpc.FaceDetectorStub) -> None:
    """gRPC core cannot hand such a frame on, so it fails the stream itself; frames before it
    are still answered."""
    good = image_bytes("zidane.jpg")
    requests = [
        pb.DetectFacesRequest(encoded=good, frame_id=1),
        pb.DetectFacesRequest(encoded=over_core_limit(), frame_id=2),
    ]
    answered: list[pb.DetectFacesResponse] = []
    with pytest.raises(grpc.RpcError) as info:
        for response in stub.StreamDetectFaces(iter(requests), timeout=30):
            answered.append(response)
    error: Any = info.value
    assert error.code() == EXHAUSTED, f"{error.code()}: {error.details()}"
    assert f"vs. {CORE_LIMIT})" in error.details(), error.details()
    assert [r.frame_id for r in answered] in ([], [1])
    assert_still_serves(stub)


def test_oversize_bytes_is_exact_at_the_limit_and_counts_unknown_fields() -> None:
    limit = 10_000
    at_limit = pb.DetectFacesRequest(encoded=b"x" * (limit - 5), frame_id=1)  # 3 + 2 bytes of framing
    assert at_limit.ByteSize() == limit
    assert oversize_bytes(at_limit, limit) is None
    over = pb.DetectFacesRequest(encoded=b"x" * (limit - 4), frame_id=1)
    assert oversize_bytes(over, limit) == limit + 1
    raw = pb.DetectFacesRequest(raw=pb.RawImage(data=b"x" * limit))
    assert oversize_bytes(raw, limit) == raw.ByteSize() == limit + 6
    # A small image plus a large field this server does not know (number 99, length-delimited).
    unknown = (
        pb.DetectFacesRequest(encoded=b"x" * 100).SerializeToString() + b"\x9a\x06\x90\x4e" + b"u" * limit
    )
    assert oversize_bytes(pb.DetectFacesRequest.FromString(unknown), limit) == len(unknown)


def test_core_receive_limit_is_a_bounded_margin() -> None:
    mib = 1024 * 1024
    assert core_receive_limit(16 * mib) == 32 * mib
    assert core_receive_limit(1024 * mib) == 1088 * mib
    assert core_receive_limit(2**31) == 2**31 - 1


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
