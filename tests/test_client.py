"""The Python client library against a real server (subprocess) on loopback TCP and a unix socket."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from facedet.client import (
    AsyncFaceDetectorClient,
    Detection,
    DetectionOptions,
    FaceDetectorClient,
    FaceDetectorError,
    Frame,
    ModelInfo,
    NoAnswerError,
    Status,
    build_request,
)
from facedet.client.channel import (
    channel_options,
    decode_health_response,
    encode_health_request,
    with_default_port,
)
from facedet.client.image_files import JPEG_MAGIC, PNG_MAGIC
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_test_support import SHARED, ServerFactory, free_port, silent_listener
from grpc_health.v1 import health_pb2

ZIDANE = SHARED / "images" / "zidane.jpg"
VIDEO = SHARED / "videos" / "one_face_640x480.mkv"


# --- a real server, for this module ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> tuple[str, str]:
    """(tcp target, unix target) of one `facedet serve` subprocess (tests/conftest.py's Server)."""
    running = module_server_factory("--summary-interval", "0", "--log-level", "warning")
    return running.target, running.unix_target


@pytest.fixture(scope="module")
def client(server: tuple[str, str]) -> Iterator[FaceDetectorClient]:
    with FaceDetectorClient(server[0], timeout=30) as c:
        yield c


def read(path: Path, flags: int = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    assert image is not None, f"OpenCV cannot read {path}"
    return np.asarray(image)


def video_frames(count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(VIDEO))
    frames: list[np.ndarray] = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert frames, f"could not read {VIDEO}"
    return frames


def assert_same_faces(a: Detection, b: Detection, pixels: float = 0.0, confidence: float = 0.0) -> None:
    assert len(a.faces) == len(b.faces)
    for fa, fb in zip(a.faces, b.faces, strict=True):
        assert abs(fa.confidence - fb.confidence) <= confidence
        for name in ("x_min", "y_min", "x_max", "y_max"):
            assert abs(getattr(fa.box, name) - getattr(fb.box, name)) <= pixels


# --- unary --------------------------------------------------------------------------------------


def test_detect_path_bytes_and_arrays_give_the_same_faces(client: FaceDetectorClient) -> None:
    from_path = client.detect(ZIDANE)
    from_str = client.detect(str(ZIDANE))
    from_bytes = client.detect(ZIDANE.read_bytes())
    bgr = read(ZIDANE)
    from_bgr = client.detect(bgr, pixel_format="BGR8")
    from_bgr_old_name = client.detect(bgr, pixel_format="BGR")
    from_rgb = client.detect(np.ascontiguousarray(bgr[:, :, ::-1]))  # RGB is the default
    from_rgb_view = client.detect(bgr[:, :, ::-1])  # non-contiguous views are fine too

    assert len(from_path.faces) == 2
    assert (from_path.image_width, from_path.image_height) == (1280, 720)
    assert from_path.ok and from_path.error is None
    assert from_path.timing.total_us > 0 and from_path.timing.batch_size >= 1
    assert_same_faces(from_path, from_str)
    assert_same_faces(from_path, from_bytes)
    # Raw pixels skip the server's JPEG decoder; OpenCV's may round a few pixels differently.
    assert_same_faces(from_path, from_bgr, pixels=2.0, confidence=0.02)
    assert_same_faces(from_bgr, from_bgr_old_name)
    assert_same_faces(from_bgr, from_rgb)
    assert_same_faces(from_bgr, from_rgb_view)
    face = from_path.faces[0]
    assert face.confidence >= from_path.faces[1].confidence
    assert face.box.width == pytest.approx(face.box.x_max - face.box.x_min)
    assert face.box.height > 0
    assert face.box.x_min <= face.landmarks.nose.x <= face.box.x_max


def test_gray_array_and_options(client: FaceDetectorClient) -> None:
    gray = read(ZIDANE, cv2.IMREAD_GRAYSCALE)
    assert client.detect(gray).image_width == 1280
    assert client.detect(gray[:, :, None]).image_height == 720
    strict = client.detect(ZIDANE, DetectionOptions(min_confidence=0.84))
    assert len(strict.faces) == 1
    assert len(client.detect(ZIDANE, DetectionOptions(max_faces=1)).faces) == 1


def test_client_default_options_and_frame_id(server: tuple[str, str]) -> None:
    with FaceDetectorClient(server[0], options=DetectionOptions(min_confidence=0.84)) as c:
        assert len(c.detect(ZIDANE).faces) == 1
        assert len(c.detect(ZIDANE, DetectionOptions()).faces) == 2  # per-call options win
        assert c.detect(ZIDANE, frame_id=42).frame_id == 42


def test_unix_socket(server: tuple[str, str]) -> None:
    with FaceDetectorClient(server[1]) as c:
        assert c.health() == "SERVING"
        assert c.health("facedet.v1.FaceDetector") == "SERVING"
        assert len(c.detect(ZIDANE).faces) == 2
        info = c.model_info()
    assert isinstance(info, ModelInfo)
    assert info.backend == "onnxruntime"
    assert info.default_options.min_confidence == pytest.approx(0.5)
    assert info.limits.max_message_bytes > 0


def test_errors_are_face_detector_errors(client: FaceDetectorClient, server: tuple[str, str]) -> None:
    with pytest.raises(FaceDetectorError) as bad:
        client.detect(b"definitely not an image")
    assert bad.value.code == "INVALID_ARGUMENT"
    assert "JPEG or PNG" in bad.value.message
    with pytest.raises(FaceDetectorError) as bad_options:
        client.detect(ZIDANE, DetectionOptions(min_confidence=2.0))
    assert bad_options.value.code == "INVALID_ARGUMENT"
    with FaceDetectorClient(f"127.0.0.1:{free_port()}", timeout=5) as nowhere:
        with pytest.raises(FaceDetectorError) as unreachable:
            nowhere.detect(ZIDANE)
        assert unreachable.value.code == "UNAVAILABLE"
        with pytest.raises(FaceDetectorError):
            nowhere.wait_until_serving(timeout=0.3)


def test_local_input_errors() -> None:
    with pytest.raises(ValueError, match="uint8"):
        build_request(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="alpha"):
        build_request(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="pixel_format"):
        build_request(np.zeros((4, 4, 3), np.uint8), pixel_format="YUV")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        build_request(12345)  # type: ignore[arg-type]
    with pytest.raises(FaceDetectorError, match="no such file"):
        build_request("/nonexistent/image.jpg")
    with pytest.raises(ValueError, match="not GRAY8"):
        build_request(np.zeros((4, 4, 3), np.uint8), pixel_format="GRAY8")
    raw = build_request(np.zeros((2, 3), np.uint8), frame_id=7).raw
    assert (raw.width, raw.height, raw.format, len(raw.data)) == (3, 2, pb.PIXEL_FORMAT_GRAY8, 6)
    color = np.zeros((2, 3, 3), np.uint8)
    assert build_request(color).raw.format == pb.PIXEL_FORMAT_RGB8  # the default, documented
    assert build_request(color, pixel_format="RGB8").raw.format == pb.PIXEL_FORMAT_RGB8
    assert build_request(color, pixel_format="BGR8").raw.format == pb.PIXEL_FORMAT_BGR8
    assert build_request(color[:, :, 0], pixel_format="BGR8").raw.format == pb.PIXEL_FORMAT_GRAY8


# --- streams ------------------------------------------------------------------------------------


def test_stream_of_60_frames_in_order(client: FaceDetectorClient) -> None:
    frames = video_frames(51)
    sixty = [frames[i % len(frames)] for i in range(60)]
    results = list(client.stream(sixty, pixel_format="BGR8"))
    assert [d.frame_id for d in results] == list(range(60))
    assert all(d.ok and len(d.faces) == 1 and d.image_width == 640 for d in results)


def test_stream_frame_errors_do_not_end_the_stream(client: FaceDetectorClient) -> None:
    good = ZIDANE.read_bytes()
    frames: list[bytes | Frame | np.ndarray] = [
        good,
        b"not an image",
        Frame(good, frame_id=1000),
        np.zeros((4, 4, 3), np.uint8),
    ]
    results = list(client.stream(frames))
    assert [d.frame_id for d in results] == [0, 1, 1000, 3]
    assert results[0].ok and len(results[0].faces) == 2
    assert results[1].error is not None and results[1].error.code == "INVALID_ARGUMENT"
    assert not results[1].faces
    assert results[2].ok and len(results[2].faces) == 2
    assert results[3].ok and not results[3].faces


def test_stream_local_failure_raises_after_earlier_frames(client: FaceDetectorClient) -> None:
    received = []
    with pytest.raises(FaceDetectorError, match="no such file"):
        for detection in client.stream([ZIDANE, ZIDANE, "/nonexistent/frame.jpg", ZIDANE]):
            received.append(detection)
    assert [d.frame_id for d in received] == [0, 1]


def test_stream_stopped_early(client: FaceDetectorClient) -> None:
    def endless() -> Iterator[bytes]:
        data = ZIDANE.read_bytes()
        while True:
            yield data

    stream = client.stream(endless())
    assert [next(stream).frame_id for _ in range(3)] == [0, 1, 2]
    stream.close()  # cancels the call; the client stays usable
    assert len(client.detect(ZIDANE).faces) == 2


# --- asyncio ------------------------------------------------------------------------------------


def test_async_client(server: tuple[str, str]) -> None:
    async def main() -> None:
        async with AsyncFaceDetectorClient(server[1], timeout=30) as c:
            assert await c.health() == "SERVING"
            assert (await c.model_info()).name
            one = await c.detect(ZIDANE)
            assert len(one.faces) == 2
            many = await asyncio.gather(*(c.detect(ZIDANE.read_bytes(), frame_id=i) for i in range(4)))
            assert [d.frame_id for d in many] == [0, 1, 2, 3]
            with pytest.raises(FaceDetectorError) as bad:
                await c.detect(b"nope")
            assert bad.value.code == "INVALID_ARGUMENT"

            async def frames() -> AsyncIterator[np.ndarray]:
                for frame in video_frames(12):
                    yield frame

            streamed = [d async for d in c.stream(frames(), pixel_format="BGR8")]
            assert [d.frame_id for d in streamed] == list(range(12))
            assert all(len(d.faces) == 1 for d in streamed)
            mixed = [d async for d in c.stream([ZIDANE, b"junk"])]  # a plain iterable works too
            assert mixed[0].ok and mixed[1].error is not None

    asyncio.run(main())


# --- the proto boundary -------------------------------------------------------------------------


def test_round_trip_through_dataclasses(server: tuple[str, str]) -> None:
    with grpc.insecure_channel(server[0]) as channel:
        stub = pb_grpc.FaceDetectorStub(channel)  # type: ignore[no-untyped-call]
        response = stub.DetectFaces(build_request(ZIDANE, frame_id=5))
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        stream = list(stub.StreamDetectFaces(iter([pb.DetectFacesRequest(encoded=b"x", frame_id=9)])))
    detection = Detection.from_proto(response)
    assert detection.frame_id == 5 and len(detection.faces) == 2
    assert detection.to_proto() == response
    assert Detection.from_proto(detection.to_proto()) == detection
    assert ModelInfo.from_proto(info).to_proto() == info
    failed = Detection.from_proto(stream[0])
    assert failed.error is not None and failed.error.code == "INVALID_ARGUMENT"
    assert failed.to_proto() == stream[0]
    options = DetectionOptions(0.25, 0.5, 10, 12.0)
    assert DetectionOptions.from_proto(options.to_proto()) == options
    assert Status.from_proto(Status("NOT_FOUND", "x").to_proto()) == Status("NOT_FOUND", "x")


def test_health_codec() -> None:
    assert encode_health_request("") == b""
    assert encode_health_request("a.B") == b"\x0a\x03a.B"
    for status in range(4):
        encoded = health_pb2.HealthCheckResponse(status=status).SerializeToString()  # type: ignore[arg-type]
        assert decode_health_response(encoded) == health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    assert (
        encode_health_request("x" * 200)
        == health_pb2.HealthCheckRequest(service="x" * 200).SerializeToString()
    )


@pytest.mark.parametrize(
    ("target", "balanced"),
    [
        ("ipv4:127.0.0.1:50070,127.0.0.1:50071", True),
        ("ipv6:[::1]:50070,[::1]:50071", True),
        ("unix:/run/facedet/front-end-0.sock,/run/facedet/front-end-1.sock", True),
        ("localhost:50051", False),
        ("unix:///run/facedet.sock", False),
        ("ipv4:127.0.0.1:50070", False),
        # A DNS name may resolve to several servers (a Kubernetes headless Service's pods).
        ("dns:///facedet.default.svc.cluster.local:50051", True),
    ],
)
def test_a_target_listing_front_ends_gets_round_robin(target: str, balanced: bool) -> None:
    options = dict(channel_options(target=target))
    assert (options.get("grpc.lb_policy_name") == "round_robin") is balanced
    if balanced:  # losing one server fails no call: wait for another, retry UNAVAILABLE
        (method,) = json.loads(options["grpc.service_config"])["methodConfig"]
        assert method["waitForReady"] is True
        assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    # The caller's own choice still wins (gRPC takes the last value of a key).
    chosen = channel_options([("grpc.lb_policy_name", "pick_first")], target)
    assert chosen[-1] == ("grpc.lb_policy_name", "pick_first")


# --- bad files, other formats -------------------------------------------------------------------


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the error message says about it)."""
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_bytes(b"not really a jpeg")
    (folder / "truncated.bmp").write_bytes(b"BM" + b"\x00" * 40)
    (folder / "a_folder.jpg").mkdir()
    return {
        "empty": (folder / "empty.jpg", "the file is empty (0 bytes)"),
        "not an image": (folder / "text.jpg", "not an image (neither JPEG nor PNG)"),
        "truncated BMP": (folder / "truncated.bmp", "BMP data is corrupt or truncated"),
        "missing": (folder / "missing.jpg", "no such file"),
        "folder": (folder / "a_folder.jpg", "is a folder"),
    }


def test_bad_files_fail_before_any_call_naming_the_file(tmp_path: Path) -> None:
    # Nothing listens at this target: an error other than UNAVAILABLE was raised before a call.
    with FaceDetectorClient(f"127.0.0.1:{free_port()}", timeout=5) as nowhere:
        for name, (path, problem) in bad_files(tmp_path).items():
            for image in (path, str(path)):
                with pytest.raises(FaceDetectorError) as bad:
                    nowhere.detect(image)
                assert bad.value.code == "INVALID_ARGUMENT", name
                assert bad.value.message.startswith(f"{path}: "), name
                assert problem in bad.value.message, name


def test_the_servers_invalid_argument_names_the_file(client: FaceDetectorClient, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(ZIDANE.read_bytes()[:5000])
    with pytest.raises(FaceDetectorError) as bad:
        client.detect(truncated)
    assert bad.value.code == "INVALID_ARGUMENT"
    assert bad.value.message.startswith(f"{truncated}: JPEG data is corrupt or truncated")
    with pytest.raises(FaceDetectorError) as bad_bytes:  # bytes have no name to give
        client.detect(truncated.read_bytes())
    assert bad_bytes.value.message.startswith("JPEG data is corrupt")


def test_async_client_bad_files(server: tuple[str, str], tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncFaceDetectorClient(server[0], timeout=30) as c:
            for path, problem in bad_files(tmp_path).values():
                with pytest.raises(FaceDetectorError, match=re.escape(problem)) as bad:
                    await c.detect(path)
                assert bad.value.code == "INVALID_ARGUMENT"

    asyncio.run(main())


def test_other_formats_are_reencoded_not_sent_as_pixels(client: FaceDetectorClient, tmp_path: Path) -> None:
    original = read(ZIDANE)
    # 3840x2160 BGR: 24.9 MB of pixels, over the server's 16 MiB message limit as raw pixels.
    big = tmp_path / "big.bmp"
    assert cv2.imwrite(str(big), cv2.resize(original, (3840, 2160)))
    request = build_request(big)
    assert request.WhichOneof("image") == "encoded" and request.encoded.startswith(JPEG_MAGIC)
    assert len(request.encoded) < 16 * 1024 * 1024
    found = client.detect(big)
    assert (found.image_width, found.image_height) == (3840, 2160) and len(found.faces) == 2

    # Small images go losslessly, as PNG: the server sees the very pixels.
    for suffix in (".tiff", ".webp", ".bmp"):
        path = tmp_path / f"zidane{suffix}"
        params = [cv2.IMWRITE_WEBP_QUALITY, 101] if suffix == ".webp" else []  # 101: lossless WebP
        assert cv2.imwrite(str(path), original, params)
        encoded = build_request(path).encoded
        assert encoded.startswith(PNG_MAGIC), suffix
        decoded = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and np.array_equal(decoded, original)
        assert_same_faces(client.detect(path), client.detect(original, pixel_format="BGR8"))


# --- targets and timeouts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "dialled"),
    [
        ("localhost", "localhost:50051"),
        ("127.0.0.1", "127.0.0.1:50051"),
        ("[::1]", "[::1]:50051"),
        ("::1", "[::1]:50051"),
        ("dns:///facedet.internal", "dns:///facedet.internal:50051"),
        ("dns:facedet", "dns:facedet:50051"),
        ("localhost:50070", "localhost:50070"),
        ("[::1]:50070", "[::1]:50070"),
        ("dns:///facedet:443", "dns:///facedet:443"),
        ("unix:///run/facedet.sock", "unix:///run/facedet.sock"),
        ("unix:relative.sock", "unix:relative.sock"),
        ("ipv4:127.0.0.1:50070,127.0.0.1:50071", "ipv4:127.0.0.1:50070,127.0.0.1:50071"),
        ("unix:/a.sock,/b.sock", "unix:/a.sock,/b.sock"),
    ],
)
def test_a_target_without_a_port_means_50051(target: str, dialled: str) -> None:
    assert with_default_port(target) == dialled
    with FaceDetectorClient(target) as c:
        assert c.target == dialled


def test_a_host_alone_reaches_port_50051_on_every_client() -> None:
    async def main() -> str:
        async with AsyncFaceDetectorClient("127.0.0.1") as c:
            return c.target

    assert asyncio.run(main()) == "127.0.0.1:50051"


def test_a_silent_listener_gives_one_clear_timeout() -> None:
    with silent_listener() as target:
        with FaceDetectorClient(target, connect_timeout=0.5) as c:
            started = time.monotonic()
            with pytest.raises(NoAnswerError) as connect:
                c.detect(ZIDANE)
            assert time.monotonic() - started < 3
            assert connect.value.code == "UNAVAILABLE"
            assert connect.value.message == f"no FaceDetector answered at {target} within 0.5 s"
            with pytest.raises(NoAnswerError, match=r"within 0\.5 s"):
                list(c.stream([ZIDANE]))
            with pytest.raises(NoAnswerError):
                c.model_info()
        # The call's own timeout, shorter, covers connecting too.
        with FaceDetectorClient(target, timeout=0.3, connect_timeout=10) as c:
            started = time.monotonic()
            with pytest.raises(NoAnswerError) as whole:
                c.detect(ZIDANE)
            assert time.monotonic() - started < 3
            assert whole.value.code == "DEADLINE_EXCEEDED"
            assert whole.value.message == f"no FaceDetector answered at {target} within 0.3 s"

        async def main() -> None:
            async with AsyncFaceDetectorClient(target, connect_timeout=0.5) as c:
                with pytest.raises(NoAnswerError, match=r"within 0\.5 s"):
                    await c.detect(ZIDANE)
                with pytest.raises(NoAnswerError, match=r"within 0\.5 s"):
                    _ = [d async for d in c.stream([ZIDANE])]

        asyncio.run(main())


def test_wait_for_ready_waits_out_a_refused_connection_and_serves_as_usual(server: tuple[str, str]) -> None:
    """wait_for_ready=True: with nothing listening, a call waits (here the 0.5 s connect
    timeout) instead of failing at once; against a server every kind of call is answered.
    tests/test_restart.py shows it riding out a restart."""
    nowhere = f"127.0.0.1:{free_port()}"
    with FaceDetectorClient(nowhere, connect_timeout=0.5, wait_for_ready=True) as c:
        started = time.monotonic()
        with pytest.raises(NoAnswerError, match=r"within 0\.5 s") as waited:
            c.detect(ZIDANE)
        assert waited.value.code == "UNAVAILABLE" and time.monotonic() - started >= 0.4
    with FaceDetectorClient(server[0], timeout=30, wait_for_ready=True) as c:
        assert c.health() == "SERVING" and c.model_info().name
        faces = len(c.detect(ZIDANE).faces)
        assert faces > 0 and [len(d.faces) for d in c.stream([ZIDANE] * 3)] == [faces] * 3

    async def main() -> None:
        async with AsyncFaceDetectorClient(nowhere, connect_timeout=0.5, wait_for_ready=True) as c:
            started = time.monotonic()
            with pytest.raises(NoAnswerError, match=r"within 0\.5 s"):
                await c.detect(ZIDANE)
            assert time.monotonic() - started >= 0.4
        async with AsyncFaceDetectorClient(server[0], timeout=30, wait_for_ready=True) as c:
            assert await c.health() == "SERVING" and (await c.model_info()).name
            assert len((await c.detect(ZIDANE)).faces) == faces
            assert [len(d.faces) async for d in c.stream([ZIDANE] * 3)] == [faces] * 3

    asyncio.run(main())


def test_a_refused_connection_still_fails_at_once() -> None:
    with FaceDetectorClient(f"127.0.0.1:{free_port()}") as c:
        started = time.monotonic()
        with pytest.raises(FaceDetectorError) as refused:
            c.detect(ZIDANE)
        assert refused.value.code == "UNAVAILABLE" and not isinstance(refused.value, NoAnswerError)
        assert time.monotonic() - started < 5
