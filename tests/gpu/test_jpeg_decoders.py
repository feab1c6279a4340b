"""The GPU JPEG decoders (`facedet_server.gpu.jpeg`) on a real GPU: each gives libjpeg-turbo's
pixels up to decoder rounding, takes a batch in which some images it cannot decode without
losing the others, and the hardware decoder's per-thread states give the same pixels when
several threads decode at once."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the GPU decoders need PyTorch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU here; run tests/gpu through the device tool", allow_module_level=True)

import cv2  # noqa: E402
import simplejpeg  # noqa: E402
from facedet_server.backends.torch_cuda import TorchCudaBackend  # noqa: E402
from facedet_server.detector import EncodedImage  # noqa: E402
from facedet_server.errors import InvalidImage  # noqa: E402
from facedet_server.gpu.detector import GpuDetector  # noqa: E402
from facedet_server.gpu.jpeg import make_jpeg_decoders  # noqa: E402
from facedet_server.gpu.nvjpeg_hw import NvJpegHardware, hardware_decoder_available  # noqa: E402
from facedet_server.options import Options  # noqa: E402
from facedet_test_support import EXPECTED_FACES, MODEL, image_bytes  # noqa: E402
from PIL import Image  # noqa: E402

pytestmark = pytest.mark.gpu
DEVICE = torch.device("cuda")
PHOTOS = ["zidane.jpg", "sample.jpg", "bus.jpg", "1.jpg", "test.jpg"]
NEEDS_ENGINES = pytest.mark.skipif(
    not hardware_decoder_available(DEVICE), reason="no hardware JPEG decoder on this GPU (or no libnvjpeg)"
)
DECODERS = [
    "torchvision",
    pytest.param("hardware", marks=NEEDS_ENGINES),
    pytest.param("both", marks=NEEDS_ENGINES),
]


def host_rgb(data: bytes) -> np.ndarray:
    return np.asarray(simplejpeg.decode_jpeg(data, colorspace="RGB")).transpose(2, 0, 1)


def progressive(name: str) -> bytes:
    bgr = cv2.cvtColor(
        np.ascontiguousarray(host_rgb(image_bytes(name)).transpose(1, 2, 0)), cv2.COLOR_RGB2BGR
    )
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return bytes(data.tobytes())


def gray(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(image_bytes(name))).convert("L").save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def backend() -> TorchCudaBackend:
    return TorchCudaBackend(MODEL, max_batch=8)


@pytest.mark.parametrize("name", DECODERS)
def test_pixels_match_libjpeg_turbo(name: str) -> None:
    decoders = make_jpeg_decoders(name, DEVICE)
    datas = {photo: image_bytes(photo) for photo in PHOTOS}
    seen: dict[str, str] = {}
    for decoder in decoders:  # what one refuses goes to the next, as in GpuDetector
        todo = [photo for photo in PHOTOS if photo not in seen]
        for photo, image in zip(todo, decoder.decode([datas[p] for p in todo]), strict=True):
            if image is None:
                continue
            seen[photo] = decoder.name
            assert image.device.type == "cuda" and image.dtype == torch.uint8
            want = host_rgb(datas[photo])
            assert tuple(image.shape) == want.shape, photo
            diff = np.abs(image.cpu().numpy().astype(np.int16) - want)
            # Decoders differ in IDCT and chroma upsampling by a level or a few, not more on average.
            assert diff.mean() < 1.5, f"{decoder.name} on {photo}: mean difference {diff.mean():.2f} levels"
    assert sorted(seen) == sorted(PHOTOS), f"left to the CPU: {set(PHOTOS) - set(seen)}"
    assert seen["zidane.jpg"] == decoders[0].name  # a baseline 4:2:0 JPEG: the first decoder's
    print(name, seen)


@pytest.mark.parametrize("name", DECODERS)
def test_a_bad_image_in_a_batch_costs_only_itself(name: str, backend: TorchCudaBackend) -> None:
    detector = GpuDetector(backend, gpu_decode=name)
    assert detector.jpeg is not None and detector.jpeg.name == name
    zidane = image_bytes("zidane.jpg")
    truncated = zidane[: len(zidane) // 3]  # header intact: passes the front door, fails the decode
    inputs = [zidane, progressive("bus.jpg"), truncated, gray("zidane.jpg"), zidane]
    items = [detector.prepare(EncodedImage(data), Options()) for data in inputs]
    assert all(item.jpeg is not None for item in items), "all five go to the GPU decoder"
    results = detector.infer_batch(items)
    counts = [None if isinstance(r, Exception) else len(r.faces) for r in results]
    assert counts[0] == counts[4] == EXPECTED_FACES["zidane.jpg"]
    assert counts[1] == EXPECTED_FACES["bus.jpg"]
    assert counts[3] is not None and counts[3] >= 1  # the players are still there in gray
    # A truncated JPEG may decode to a partly gray image (libjpeg-turbo pads) or be refused;
    # either way it is answered on its own, and a refusal says why.
    if isinstance(results[2], Exception):
        assert isinstance(results[2], InvalidImage)


@NEEDS_ENGINES
def test_hardware_threads_decode_at_once_and_agree() -> None:
    decoder = NvJpegHardware(DEVICE)
    datas = [image_bytes(photo) for photo in PHOTOS] * 4
    reference = [None if img is None else img.cpu() for img in decoder.decode(datas)]
    assert sum(img is not None for img in reference) >= 16  # the hardware refuses test.jpg only
    errors: list[str] = []

    def worker() -> None:
        with torch.cuda.stream(torch.cuda.Stream()):
            for _ in range(20):
                got = decoder.decode(datas)
                torch.cuda.current_stream().synchronize()
                for want, image in zip(reference, got, strict=True):
                    if (want is None) != (image is None) or (
                        want is not None and image is not None and not torch.equal(want, image.cpu())
                    ):
                        errors.append("a thread's pixels differ")
                        return

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_auto_and_off() -> None:
    assert [d.name for d in make_jpeg_decoders("auto", DEVICE)] == ["torchvision"]
    assert make_jpeg_decoders("off", DEVICE) == []
