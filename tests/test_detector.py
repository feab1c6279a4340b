"""The CPU pipeline end to end with the real yolov5n-0.5 ONNX model (face counts from
shared/README.md), plus the batching logic of `infer_batch` against a fake dynamic-shape backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg
from facedet_server.app.config import ServerConfig
from facedet_server.app.server import limits_for
from facedet_server.errors import DetectError, InvalidImage
from facedet_server.faces.options import Options
from facedet_server.image import inputs as inputs_module
from facedet_server.image.decode import DecodedImage, decode_encoded
from facedet_server.image.inputs import EncodedImage, ImageInput, RawFrame
from facedet_server.model.spec import ModelSpec
from facedet_server.pipeline.base import Detection, Prepared
from facedet_server.pipeline.host import HostPipeline
from facedet_server.runtime.onnxruntime import OnnxRuntimeBackend

LIMITS = limits_for(ServerConfig())  # the server's defaults


def shared_dir() -> Path:
    env = os.environ.get("FACEDET_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def model_path() -> Path:
    env = os.environ.get("FACEDET_MODEL")
    return Path(env) if env else shared_dir() / "models" / "yolov5n-0.5.onnx"


def image_bytes(name: str) -> bytes:
    return (shared_dir() / "images" / name).read_bytes()


@pytest.fixture(scope="module")
def backend() -> Iterator[OnnxRuntimeBackend]:
    path = model_path()
    if not path.is_file():
        pytest.skip(f"model file {path} is missing (set FACEDET_SHARED or FACEDET_MODEL)")
    b = OnnxRuntimeBackend(path, intra_op_threads=0, inter_op_threads=1, max_batch=8)
    yield b
    b.close()


@pytest.fixture(scope="module")
def detector(backend: OnnxRuntimeBackend) -> HostPipeline:
    return HostPipeline(backend, LIMITS)


def raw_rgb(data: bytes) -> RawFrame:
    pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
    return RawFrame(pixels.shape[1], pixels.shape[0], "RGB8", pixels.tobytes())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def assert_same_faces(got: np.ndarray, expected: np.ndarray, min_iou: float, score_tol: float) -> None:
    """One-to-one match by IoU (the order may differ where scores are close)."""
    assert len(got) == len(expected), (got[:, :5], expected[:, :5])
    unused = list(range(len(expected)))
    for face in got:
        best = max(unused, key=lambda j: iou(face, expected[j]))
        assert iou(face, expected[best]) >= min_iou, (face[:5], expected[best][:5])
        assert abs(face[4] - expected[best][4]) <= score_tol
        unused.remove(best)


def check_plausible(detection: Detection) -> None:
    faces = detection.faces
    assert faces.dtype == np.float32 and faces.ndim == 2 and faces.shape[1] == 15
    w, h = detection.width, detection.height
    assert np.all(faces[:, 4] >= 0.5) and np.all(faces[:, 4] <= 1.0)
    assert np.all(np.diff(faces[:, 4]) <= 0)  # best first
    assert np.all(faces[:, 0] >= 0) and np.all(faces[:, 2] <= w) and np.all(faces[:, 0] < faces[:, 2])
    assert np.all(faces[:, 1] >= 0) and np.all(faces[:, 3] <= h) and np.all(faces[:, 1] < faces[:, 3])
    for face in faces:
        bw, bh = face[2] - face[0], face[3] - face[1]
        assert 0.6 <= bh / bw <= 2.5, face[:4]
        # The five landmarks (eyes, nose, mouth corners) lie in or very near their box.
        lx, ly = face[5::2], face[6::2]
        assert np.all(lx >= face[0] - 0.1 * bw) and np.all(lx <= face[2] + 0.1 * bw), face
        assert np.all(ly >= face[1] - 0.1 * bh) and np.all(ly <= face[3] + 0.1 * bh), face
        # Eyes above the mouth corners.
        assert max(ly[0], ly[1]) < min(ly[3], ly[4]), face


@pytest.mark.parametrize(
    ("name", "size", "count"),
    [("zidane.jpg", (1280, 720), 2), ("sample.jpg", (1024, 768), 8), ("bus.jpg", (810, 1080), 2)],
)
def test_known_face_counts(detector: HostPipeline, name: str, size: tuple[int, int], count: int) -> None:
    detection = detector.detect(EncodedImage(image_bytes(name)))
    assert (detection.width, detection.height) == size
    assert len(detection.faces) == count
    check_plausible(detection)
    timing = detection.timing
    assert timing.decode_us > 0 and timing.inference_us > 0
    assert timing.total_us >= timing.decode_us + timing.inference_us
    assert timing.batch_size == 1


def test_raw_frames_equal_the_jpeg(detector: HostPipeline) -> None:
    """zidane is 1280x720, decoded at full size (ratio 0.5): the same pixels as a raw frame give
    the same faces, whatever the pixel order."""
    data = image_bytes("zidane.jpg")
    encoded = detector.detect(EncodedImage(data)).faces
    rgb = raw_rgb(data)
    np.testing.assert_array_equal(detector.detect(rgb).faces, encoded)
    bgr = np.frombuffer(rgb.data, np.uint8).reshape(rgb.height, rgb.width, 3)[..., ::-1]
    np.testing.assert_array_equal(
        detector.detect(RawFrame(rgb.width, rgb.height, "BGR8", bgr.tobytes())).faces, encoded
    )


def test_mirrored_image_gives_mirrored_faces(detector: HostPipeline) -> None:
    data = image_bytes("sample.jpg")
    pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
    h, w = pixels.shape[:2]
    flipped = np.ascontiguousarray(pixels[:, ::-1])
    original = detector.detect(RawFrame(w, h, "RGB8", pixels.tobytes())).faces
    mirrored = detector.detect(RawFrame(w, h, "RGB8", flipped.tobytes())).faces.copy()
    mirrored[:, [0, 2]] = w - mirrored[:, [2, 0]]
    assert_same_faces(mirrored, original, min_iou=0.8, score_tol=0.1)


def test_dct_reduced_decode_maps_faces_to_the_large_image(
    detector: HostPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zidane enlarged 2x to 2560x1440 is decoded at 1/4 (640x360, what the network sees anyway):
    its faces are the 1280x720 faces scaled by 2."""
    data = image_bytes("zidane.jpg")
    small = simplejpeg.decode_jpeg(data, colorspace="RGB")
    large = cv2.resize(small, (2560, 1440), interpolation=cv2.INTER_LINEAR)
    large_jpeg = simplejpeg.encode_jpeg(large, quality=95, colorspace="RGB")
    decoded_shapes: list[tuple[int, ...]] = []

    def spy(
        data: bytes, max_pixels: int, target: tuple[int, int] | None = None, orient: bool = True
    ) -> DecodedImage:
        decoded = decode_encoded(data, max_pixels, target, orient)
        decoded_shapes.append(decoded.pixels.shape)
        return decoded

    monkeypatch.setattr(inputs_module, "decode_encoded", spy)
    prepared = detector.prepare(EncodedImage(large_jpeg), Options())
    assert decoded_shapes == [(360, 640, 3)]  # the decoder was allowed to reduce towards 640x640
    assert (prepared.width, prepared.height) == (2560, 1440)
    assert prepared.transform.gain_x == pytest.approx(4.0)  # 640 network px <- 640 decoded px <- 2560
    reference = detector.detect(EncodedImage(data)).faces.copy()
    reference[:, :4] *= 2
    reference[:, 5:] *= 2
    faces = detector.detect(EncodedImage(large_jpeg)).faces
    assert_same_faces(faces, reference, min_iou=0.85, score_tol=0.1)
    # Landmarks too, within a few pixels of the large image.
    order = [int(np.argmax([iou(f, r) for r in reference])) for f in faces]
    np.testing.assert_allclose(faces[:, 5:], reference[order, 5:], atol=12)


def test_infer_batch_equals_one_at_a_time(backend: OnnxRuntimeBackend) -> None:
    """Mixed inputs, per-item options, chunks of 2: each result is that image's own result."""
    detector = HostPipeline(backend, LIMITS)
    detector.backend = _Chunked(backend, max_batch=2)  # type: ignore[assignment]
    blank = RawFrame(320, 200, "RGB8", np.full((200, 320, 3), 90, np.uint8).tobytes())
    inputs: list[tuple[ImageInput, Options]] = [
        (EncodedImage(image_bytes("zidane.jpg")), Options()),
        (EncodedImage(image_bytes("sample.jpg")), Options(min_confidence=0.87)),
        (blank, Options()),
        (raw_rgb(image_bytes("bus.jpg")), Options()),
        (EncodedImage(image_bytes("sample.jpg")), Options(max_faces=3)),
    ]
    results = detector.infer_batch([detector.prepare(image, options) for image, options in inputs])
    assert len(results) == len(inputs)
    for (image, options), result in zip(inputs, results, strict=True):
        assert isinstance(result, Detection)
        alone = detector.detect(image, options)
        np.testing.assert_allclose(result.faces, alone.faces, rtol=1e-5, atol=1e-3)
        assert (result.width, result.height) == (alone.width, alone.height)
    found = [r for r in results if isinstance(r, Detection)]
    # zidane 2 and bus 2 (README), a flat grey frame none, sample capped at 3 by max_faces; the
    # stricter threshold on sample leaves fewer than its 8 faces at 0.5, all at 0.87 or more.
    assert [len(found[i].faces) for i in (0, 2, 3, 4)] == [2, 0, 2, 3]
    assert 0 < len(found[1].faces) < 8 and found[1].faces[:, 4].min() >= 0.87
    assert [r.timing.batch_size for r in found] == [2, 2, 2, 2, 1]


class _Chunked:
    """The real backend, but taking at most `max_batch` images per call (and counting calls)."""

    def __init__(self, inner: OnnxRuntimeBackend, max_batch: int) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.name = inner.name
        self.device = inner.device
        self.model_sha256 = inner.model_sha256
        self.max_batch = max_batch
        self.shapes: list[tuple[int, ...]] = []

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        assert batch.shape[0] <= self.max_batch
        self.shapes.append(batch.shape)
        return self.inner.run(batch)

    def close(self) -> None:
        pass


def test_warm_up_runs_the_model_once_at_the_input_shape(backend: OnnxRuntimeBackend) -> None:
    detector = HostPipeline(backend, LIMITS)
    counting = _Chunked(backend, max_batch=8)
    detector.backend = counting  # type: ignore[assignment]
    assert detector.input_shape == (640, 640)
    detector.warm_up()
    assert counting.shapes == [(1, 3, 640, 640)]


def test_invalid_images_and_limits(detector: HostPipeline, backend: OnnxRuntimeBackend) -> None:
    with pytest.raises(InvalidImage, match="not a JPEG or PNG"):
        detector.detect(EncodedImage(b"not an image at all"))
    with pytest.raises(InvalidImage, match=r"raw\.data has"):
        detector.detect(RawFrame(10, 10, "RGB8", b"\x00" * 299))
    small = HostPipeline(backend, replace(LIMITS, max_pixels=1280 * 720 - 1))
    with pytest.raises(InvalidImage, match="over the server limit"):
        small.detect(EncodedImage(image_bytes("zidane.jpg")))
    assert (
        len(
            HostPipeline(backend, replace(LIMITS, max_pixels=1280 * 720))
            .detect(EncodedImage(image_bytes("zidane.jpg")))
            .faces
        )
        == 2
    )


# ----------------------------------------------------------------------------------------------
# infer_batch with a dynamic-shape model: grouping by input shape, chunking, result order.


class FakeDynamicBackend:
    """A 'decoded' model that finds one 16x16 face at the centre of every input, scoring it by the
    colour there, so each result tells which image it came from."""

    name = "fake"
    device = "cpu"
    model_sha256 = "0" * 64

    def __init__(self, max_batch: int) -> None:
        self.spec = ModelSpec(
            name="fake",
            strides=(),
            anchors=(),
            input_name="x",
            output_names=("y",),
            output_kind="decoded",
            input_height=None,
            input_width=None,
            batch_size=None,
        )
        self.max_batch = max_batch
        self.shapes: list[tuple[int, ...]] = []

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        assert batch.dtype == np.float32 and batch.shape[0] <= self.max_batch
        self.shapes.append(batch.shape)
        n, _, h, w = batch.shape
        out = np.zeros((n, 1, 15), np.float32)
        for i in range(n):
            out[i, 0, :4] = [w / 2, h / 2, 16, 16]
            out[i, 0, 4] = 0.5 + 0.4 * batch[i, 0, h // 2, w // 2]
            out[i, 0, 5:] = np.tile([w / 2, h / 2], 5)
        return [out]

    def close(self) -> None:
        pass


def test_infer_batch_groups_by_shape_in_chunks_and_keeps_order() -> None:
    backend = FakeDynamicBackend(max_batch=2)
    detector = HostPipeline(backend, LIMITS, input_size=640)  # type: ignore[arg-type]
    assert detector.fixed_shape is None
    sizes = [
        (1280, 720),
        (720, 1280),
        (640, 640),
        (1280, 720),
        (300, 200),
        (1920, 1080),
        (720, 1280),
        (1280, 720),
    ]
    images = [
        RawFrame(w, h, "GRAY8", np.full((h, w), 20 * (i + 1), np.uint8).tobytes())
        for i, (w, h) in enumerate(sizes)
    ]
    prepared = [detector.prepare(image, Options()) for image in images]
    # Network inputs: the long side at 640, the short side rounded up to a multiple of 32.
    expected_shapes = [
        (384, 640),
        (640, 384),
        (640, 640),
        (384, 640),
        (448, 640),
        (384, 640),
        (640, 384),
        (384, 640),
    ]
    assert [p.canvas.shape[:2] for p in prepared] == expected_shapes
    results = detector.infer_batch(prepared)
    # One model call per shape and chunk: 4 of 640x384 -> 2 calls, 2 of 384x640 -> 1, the rest 1 each.
    assert sorted(backend.shapes) == sorted(
        [(2, 3, 384, 640), (2, 3, 384, 640), (2, 3, 640, 384), (1, 3, 640, 640), (1, 3, 448, 640)]
    )
    for i, ((w, h), result) in enumerate(zip(sizes, results, strict=True)):
        assert isinstance(result, Detection)
        assert (result.width, result.height) == (w, h)
        (face,) = result.faces
        assert face[4] == pytest.approx(0.5 + 0.4 * 20 * (i + 1) / 255, abs=1e-5)
        # The centre of the network input is the centre of the client's image, give or take the
        # half pixel of an odd padding.
        gain = prepared[i].transform.gain_x
        centre = [(face[0] + face[2]) / 2, (face[1] + face[3]) / 2]
        np.testing.assert_allclose(centre, [w / 2, h / 2], atol=gain)
        np.testing.assert_allclose(face[5::2], w / 2, atol=gain)
        np.testing.assert_allclose(face[6::2], h / 2, atol=gain)
        # 16 network pixels are 16 * w / new_w client pixels.
        assert face[2] - face[0] == pytest.approx(16 * gain, rel=1e-4)


def test_prepare_records_the_image_and_options() -> None:
    detector = HostPipeline(FakeDynamicBackend(max_batch=4), LIMITS)  # type: ignore[arg-type]
    options = Options(min_confidence=0.8)
    prepared = detector.prepare(RawFrame(64, 32, "RGB8", bytes(64 * 32 * 3)), options)
    assert isinstance(prepared, Prepared)
    assert (prepared.width, prepared.height, prepared.options) == (64, 32, options)
    assert prepared.canvas.shape == (320, 640, 3)  # enlarged to the long side, multiple of 32
    assert prepared.timing.decode_us > 0


def test_detect_raises_the_pipeline_error() -> None:
    detector = HostPipeline(FakeDynamicBackend(max_batch=4), LIMITS)  # type: ignore[arg-type]
    with pytest.raises(DetectError):
        detector.detect(RawFrame(0, 0, "RGB8", b""))
