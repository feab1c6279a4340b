"""End to end: a real `facedet serve` process, the real model, the shared photos, over loopback TCP
and over a unix socket."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import numpy as np
import pytest
import simplejpeg
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_test_support import CHANNEL_OPTIONS, EXPECTED_FACES, Server, ServerFactory, image_bytes
from PIL import Image

TRANSPORTS = ["tcp", "unix"]
PHOTOS = list(EXPECTED_FACES)  # zidane.jpg, sample.jpg, bus.jpg


@pytest.fixture(params=TRANSPORTS)
def transport_stub(request: pytest.FixtureRequest, server: Server) -> Iterator[pb_grpc.FaceDetectorStub]:
    target = server.target if request.param == "tcp" else server.unix_target
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        yield pb_grpc.FaceDetectorStub(channel)


# --- helpers ---------------------------------------------------------------------------------


def rgb_of(name: str) -> np.ndarray:
    return np.asarray(simplejpeg.decode_jpeg(image_bytes(name), colorspace="RGB"))


def raw_request(
    rgb: np.ndarray, fmt: pb.PixelFormat = pb.PIXEL_FORMAT_RGB8, frame_id: int = 0
) -> pb.DetectFacesRequest:
    height, width = rgb.shape[:2]
    if fmt == pb.PIXEL_FORMAT_BGR8:
        pixels = np.ascontiguousarray(rgb[..., ::-1])
    elif fmt == pb.PIXEL_FORMAT_GRAY8:
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        pixels = rgb
    raw = pb.RawImage(width=width, height=height, format=fmt, data=pixels.tobytes())
    return pb.DetectFacesRequest(raw=raw, frame_id=frame_id)


def boxes(response: pb.DetectFacesResponse) -> np.ndarray:
    return np.array([[f.box.x_min, f.box.y_min, f.box.x_max, f.box.y_max] for f in response.faces]).reshape(
        -1, 4
    )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def assert_same_faces(a: pb.DetectFacesResponse, b: pb.DetectFacesResponse, min_iou: float = 0.9) -> None:
    """Same number of faces, each face of `a` matched by a distinct face of `b` with IoU >= min_iou."""
    ba, bb = boxes(a), boxes(b)
    assert len(ba) == len(bb), f"{len(ba)} faces vs {len(bb)}:\n{ba}\n{bb}"
    unused = list(range(len(bb)))
    for box in ba:
        scores = [(iou(box, bb[j]), j) for j in unused]
        best, j = max(scores)
        assert best >= min_iou, f"face {box} has no match (best IoU {best:.3f}) in\n{bb}"
        unused.remove(j)


def assert_valid_faces(
    response: pb.DetectFacesResponse, width: int, height: int, min_conf: float = 0.5
) -> None:
    assert (response.image_width, response.image_height) == (width, height)
    confidences = [f.confidence for f in response.faces]
    assert confidences == sorted(confidences, reverse=True), "faces must come most confident first"
    for face in response.faces:
        assert min_conf <= face.confidence <= 1.0
        b = face.box
        assert 0 <= b.x_min < b.x_max <= width, f"box x outside the {width}px image: {b}"
        assert 0 <= b.y_min < b.y_max <= height, f"box y outside the {height}px image: {b}"
        # "Inside or near its box": within the box grown by 25% of its size on each side.
        mx, my = 0.25 * (b.x_max - b.x_min), 0.25 * (b.y_max - b.y_min)
        lm = face.landmarks
        points = [lm.left_eye, lm.right_eye, lm.nose, lm.mouth_left, lm.mouth_right]
        for p in points:
            assert b.x_min - mx <= p.x <= b.x_max + mx and b.y_min - my <= p.y <= b.y_max + my, (
                f"landmark {p} far outside box {b}"
            )
        # An upright face: eyes above the mouth, left eye on the image's left.
        assert lm.left_eye.x < lm.right_eye.x and lm.mouth_left.x < lm.mouth_right.x
        assert max(lm.left_eye.y, lm.right_eye.y) < min(lm.mouth_left.y, lm.mouth_right.y)
    t = response.timing
    assert t.total_us > 0 and t.inference_us > 0 and t.batch_size >= 1
    # The stages are disjoint parts of the request's time on the server.
    assert t.decode_us + t.queue_us + t.inference_us + t.postprocess_us <= t.total_us, t


def jpeg_size(data: bytes) -> tuple[int, int]:
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return width, height


# --- single images ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", PHOTOS)
def test_photo_face_counts(transport_stub: pb_grpc.FaceDetectorStub, name: str) -> None:
    data = image_bytes(name)
    response = transport_stub.DetectFaces(pb.DetectFacesRequest(encoded=data, frame_id=42), timeout=30)
    assert response.frame_id == 42
    assert not response.HasField("error")
    assert len(response.faces) == EXPECTED_FACES[name], [f.confidence for f in response.faces]
    assert_valid_faces(response, *jpeg_size(data))


def test_explicit_threshold_matches_default(transport_stub: pb_grpc.FaceDetectorStub) -> None:
    data = image_bytes("sample.jpg")
    default = transport_stub.DetectFaces(pb.DetectFacesRequest(encoded=data), timeout=30)
    explicit = transport_stub.DetectFaces(
        pb.DetectFacesRequest(encoded=data, options=pb.DetectionOptions(min_confidence=0.5)), timeout=30
    )
    assert_same_faces(default, explicit, min_iou=0.999)
    # Options are applied: a higher threshold and max_faces both cut the list.
    strict = transport_stub.DetectFaces(
        pb.DetectFacesRequest(encoded=data, options=pb.DetectionOptions(min_confidence=0.99)), timeout=30
    )
    assert len(strict.faces) < len(default.faces)
    capped = transport_stub.DetectFaces(
        pb.DetectFacesRequest(encoded=data, options=pb.DetectionOptions(max_faces=3)), timeout=30
    )
    assert len(capped.faces) == 3
    assert [f.confidence for f in capped.faces] == [f.confidence for f in default.faces[:3]]


@pytest.mark.parametrize("fmt", [pb.PIXEL_FORMAT_RGB8, pb.PIXEL_FORMAT_BGR8], ids=["RGB8", "BGR8"])
def test_raw_frames_match_jpeg(transport_stub: pb_grpc.FaceDetectorStub, fmt: pb.PixelFormat) -> None:
    data = image_bytes("zidane.jpg")
    jpeg = transport_stub.DetectFaces(pb.DetectFacesRequest(encoded=data), timeout=30)
    rgb = rgb_of("zidane.jpg")
    raw = transport_stub.DetectFaces(raw_request(rgb, fmt, frame_id=7), timeout=30)
    assert raw.frame_id == 7
    assert len(raw.faces) == EXPECTED_FACES["zidane.jpg"]
    assert_valid_faces(raw, rgb.shape[1], rgb.shape[0])
    assert_same_faces(jpeg, raw)


def test_rgb_and_bgr_frames_agree(transport_stub: pb_grpc.FaceDetectorStub) -> None:
    rgb = rgb_of("sample.jpg")
    a = transport_stub.DetectFaces(raw_request(rgb, pb.PIXEL_FORMAT_RGB8), timeout=30)
    b = transport_stub.DetectFaces(raw_request(rgb, pb.PIXEL_FORMAT_BGR8), timeout=30)
    assert len(a.faces) == EXPECTED_FACES["sample.jpg"]
    # The same pixels in another byte order must give exactly the same result.
    assert_same_faces(a, b, min_iou=0.999)
    # ...whereas a frame with its channels swapped but labelled RGB is a different picture; this
    # checks the server does not ignore the format (the scores change even if the faces do not).
    swapped = transport_stub.DetectFaces(
        raw_request(np.ascontiguousarray(rgb[..., ::-1]), pb.PIXEL_FORMAT_RGB8), timeout=30
    )
    assert [f.confidence for f in swapped.faces] != [f.confidence for f in a.faces]


def test_gray_frame(transport_stub: pb_grpc.FaceDetectorStub) -> None:
    rgb = rgb_of("zidane.jpg")
    response = transport_stub.DetectFaces(raw_request(rgb, pb.PIXEL_FORMAT_GRAY8, frame_id=3), timeout=30)
    assert response.frame_id == 3
    assert not response.HasField("error")
    assert_valid_faces(response, rgb.shape[1], rgb.shape[0])


def test_png_matches_jpeg(transport_stub: pb_grpc.FaceDetectorStub) -> None:
    data = image_bytes("zidane.jpg")
    rgb = rgb_of("zidane.jpg")
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    from_png = transport_stub.DetectFaces(pb.DetectFacesRequest(encoded=png.tobytes()), timeout=30)
    from_jpeg = transport_stub.DetectFaces(pb.DetectFacesRequest(encoded=data), timeout=30)
    from_raw = transport_stub.DetectFaces(raw_request(rgb), timeout=30)
    assert len(from_png.faces) == EXPECTED_FACES["zidane.jpg"]
    assert_valid_faces(from_png, rgb.shape[1], rgb.shape[0])
    assert_same_faces(from_jpeg, from_png)
    # Lossless PNG of the decoded pixels is the raw frame, so the result is the same.
    assert_same_faces(from_raw, from_png, min_iou=0.999)


def test_progressive_jpeg(transport_stub: pb_grpc.FaceDetectorStub) -> None:
    rgb = rgb_of("bus.jpg")
    ok, progressive = cv2.imencode(
        ".jpg",
        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 95],
    )
    assert ok
    response = transport_stub.DetectFaces(pb.DetectFacesRequest(encoded=progressive.tobytes()), timeout=30)
    assert len(response.faces) == EXPECTED_FACES["bus.jpg"]
    assert_valid_faces(response, rgb.shape[1], rgb.shape[0])


def pil_encoded(mode: str, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(image_bytes("zidane.jpg"))).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def png16() -> bytes:
    bgr16 = cv2.cvtColor(rgb_of("zidane.jpg"), cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    ok, data = cv2.imencode(".png", bgr16)
    assert ok
    return data.tobytes()


ENCODINGS = {
    "cmyk-jpeg": lambda: pil_encoded("CMYK", "JPEG"),
    "gray-jpeg": lambda: pil_encoded("L", "JPEG"),
    "rgba-png": lambda: pil_encoded("RGBA", "PNG"),
    "gray-png": lambda: pil_encoded("L", "PNG"),
    "palette-png": lambda: pil_encoded("P", "PNG"),
    "16bit-png": png16,
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_other_jpeg_and_png_flavours(stub: pb_grpc.FaceDetectorStub, encoding: str) -> None:
    """Every JPEG/PNG flavour of the same photo finds the same faces as the RGB JPEG."""
    reference = stub.DetectFaces(pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg")), timeout=30)
    response = stub.DetectFaces(pb.DetectFacesRequest(encoded=ENCODINGS[encoding]()), timeout=30)
    assert_valid_faces(response, reference.image_width, reference.image_height)
    assert_same_faces(reference, response, min_iou=0.8)


def test_dct_scaled_jpeg_maps_back_to_original_pixels(stub: pb_grpc.FaceDetectorStub) -> None:
    """test.jpg (2048x1150) is decoded at a reduced DCT scale; its faces must still be where the
    full-resolution raw frame puts them."""
    data = image_bytes("test.jpg")
    rgb = rgb_of("test.jpg")
    jpeg = stub.DetectFaces(pb.DetectFacesRequest(encoded=data), timeout=60)
    raw = stub.DetectFaces(raw_request(rgb), timeout=60)
    assert (jpeg.image_width, jpeg.image_height) == (rgb.shape[1], rgb.shape[0]) == (2048, 1150)
    assert len(raw.faces) > 50, "test.jpg is a crowd"
    assert abs(len(jpeg.faces) - len(raw.faces)) <= 0.1 * len(raw.faces)
    assert_valid_faces(jpeg, 2048, 1150)
    raw_boxes = boxes(raw)
    for box in boxes(jpeg)[:30]:
        best = max(iou(box, other) for other in raw_boxes)
        assert best >= 0.7, f"JPEG face {box} is not where the raw frame has one (best IoU {best:.2f})"


def test_min_face_size(stub: pb_grpc.FaceDetectorStub) -> None:
    data = image_bytes("sample.jpg")
    every = stub.DetectFaces(pb.DetectFacesRequest(encoded=data), timeout=30)
    sides = sorted(min(f.box.x_max - f.box.x_min, f.box.y_max - f.box.y_min) for f in every.faces)
    cut = (sides[2] + sides[3]) / 2  # between the third and fourth smallest face
    large = stub.DetectFaces(
        pb.DetectFacesRequest(encoded=data, options=pb.DetectionOptions(min_face_size=cut)), timeout=30
    )
    assert len(large.faces) == len(every.faces) - 3
    assert all(min(f.box.x_max - f.box.x_min, f.box.y_max - f.box.y_min) >= cut for f in large.faces)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5000, 10), (10, 5000)])
def test_tiny_and_extreme_shapes(stub: pb_grpc.FaceDetectorStub, size: tuple[int, int]) -> None:
    width, height = size
    gray = np.full((height, width, 3), 128, np.uint8)
    ok, jpeg = cv2.imencode(".jpg", gray)
    assert ok
    for request in (pb.DetectFacesRequest(encoded=jpeg.tobytes()), raw_request(gray)):
        response = stub.DetectFaces(request, timeout=30)
        assert (response.image_width, response.image_height) == (width, height)
        assert_valid_faces(response, width, height)


# --- streams ---------------------------------------------------------------------------------


def stream_frames(count: int, first_id: int = 1000, step: int = 7) -> list[tuple[pb.DetectFacesRequest, str]]:
    """`count` frames cycling zidane/sample/bus, alternately JPEG and raw RGB/BGR; each with the
    photo it shows."""
    raw_cache = {name: rgb_of(name) for name in PHOTOS}
    jpegs = {name: image_bytes(name) for name in PHOTOS}
    frames = []
    for i in range(count):
        name = PHOTOS[i % 3]
        frame_id = first_id + i * step
        kind = (i // 3) % 3
        if kind == 0:
            request = pb.DetectFacesRequest(encoded=jpegs[name], frame_id=frame_id)
        else:
            fmt = pb.PIXEL_FORMAT_RGB8 if kind == 1 else pb.PIXEL_FORMAT_BGR8
            request = raw_request(raw_cache[name], fmt, frame_id)
        frames.append((request, name))
    return frames


def check_stream(
    responses: Sequence[pb.DetectFacesResponse], frames: Sequence[tuple[pb.DetectFacesRequest, str]]
) -> None:
    assert len(responses) == len(frames), f"{len(frames)} frames sent, {len(responses)} answered"
    for index, (response, (request, name)) in enumerate(zip(responses, frames, strict=True)):
        assert response.frame_id == request.frame_id, f"response {index} out of order"
        assert not response.HasField("error"), f"frame {index}: {response.error}"
        assert len(response.faces) == EXPECTED_FACES[name], f"frame {index} ({name})"
        width, height = jpeg_size(image_bytes(name))
        assert (response.image_width, response.image_height) == (width, height), f"frame {index}"


@pytest.mark.timeout(120)
def test_stream_200_frames_in_order(transport_stub: pb_grpc.FaceDetectorStub) -> None:
    frames = stream_frames(200)
    responses = list(transport_stub.StreamDetectFaces(iter([r for r, _ in frames]), timeout=100))
    check_stream(responses, frames)


def test_stream_corrupt_frame_gets_error_and_goes_on(transport_stub: pb_grpc.FaceDetectorStub) -> None:
    frames = stream_frames(12, first_id=1)
    requests = [r for r, _ in frames]
    good = image_bytes("zidane.jpg")
    requests[5] = pb.DetectFacesRequest(
        encoded=good[: len(good) // 3] + b"\x00" * 64, frame_id=requests[5].frame_id
    )
    responses = list(transport_stub.StreamDetectFaces(iter(requests), timeout=60))
    assert len(responses) == 12
    bad = responses[5]
    assert bad.frame_id == requests[5].frame_id
    assert bad.HasField("error")
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] == 3
    assert "JPEG" in bad.error.message
    assert not bad.faces
    check_stream(responses[:5], frames[:5])
    check_stream(responses[6:], frames[6:])


def test_empty_stream(transport_stub: pb_grpc.FaceDetectorStub) -> None:
    assert list(transport_stub.StreamDetectFaces(iter([]), timeout=10)) == []


@pytest.mark.timeout(120)
def test_concurrent_streams_and_unary_do_not_mix(server: Server) -> None:
    """Two streams with different photos and id ranges plus unary calls, all at once on one
    channel: every response belongs to its own request."""
    with server.stub() as stub:
        barrier = threading.Barrier(3)

        def run_stream(
            name: str, first_id: int
        ) -> tuple[list[pb.DetectFacesResponse], list[tuple[pb.DetectFacesRequest, str]]]:
            rgb, jpeg = rgb_of(name), image_bytes(name)
            frames = [
                (
                    raw_request(rgb, pb.PIXEL_FORMAT_RGB8, first_id + i)
                    if i % 2
                    else pb.DetectFacesRequest(encoded=jpeg, frame_id=first_id + i),
                    name,
                )
                for i in range(40)
            ]
            barrier.wait(10)
            return list(stub.StreamDetectFaces(iter([r for r, _ in frames]), timeout=100)), frames

        def run_unary() -> list[pb.DetectFacesResponse]:
            data = image_bytes("bus.jpg")
            barrier.wait(10)
            futures = [
                stub.DetectFaces.future(
                    pb.DetectFacesRequest(encoded=data, frame_id=9_000_000 + i), timeout=100
                )
                for i in range(20)
            ]
            return [f.result() for f in futures]

        with ThreadPoolExecutor(3) as pool:
            a = pool.submit(run_stream, "zidane.jpg", 1_000_000)
            b = pool.submit(run_stream, "sample.jpg", 2_000_000)
            u = pool.submit(run_unary)
            check_stream(*a.result())
            check_stream(*b.result())
            unary = u.result()
        width, height = jpeg_size(image_bytes("bus.jpg"))
        for i, response in enumerate(unary):
            assert response.frame_id == 9_000_000 + i
            assert len(response.faces) == EXPECTED_FACES["bus.jpg"]
            assert (response.image_width, response.image_height) == (width, height)


# --- batching --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batching_server(module_server_factory: ServerFactory) -> Server:
    return module_server_factory("--max-batch", "8", "--max-delay-ms", "20", unix=False, name="batching")


@pytest.mark.timeout(120)
def test_concurrent_requests_are_batched(batching_server: Server) -> None:
    photos = [image_bytes(name) for name in PHOTOS]
    with batching_server.stub() as stub:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.max_batch == 8
        assert info.max_delay_ms == pytest.approx(20)
        futures = [
            stub.DetectFaces.future(pb.DetectFacesRequest(encoded=photos[i % 3], frame_id=i), timeout=60)
            for i in range(48)
        ]
        responses = [f.result() for f in futures]
    sizes = [r.timing.batch_size for r in responses]
    assert max(sizes) > 1, f"no request shared a batch: {sizes}"
    assert all(1 <= s <= 8 for s in sizes), sizes
    for i, response in enumerate(responses):
        assert response.frame_id == i
        assert len(response.faces) == EXPECTED_FACES[PHOTOS[i % 3]], f"request {i}"
