"""nvJPEG (`facedet_server.image.nvjpeg`) on a real GPU: it gives libjpeg-turbo's pixels up to
decoder rounding, and a batch holding JPEGs it cannot decode, grayscale and progressive ones
loses none of the others: each image is answered on its own."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from facedet_test_support import cuda_torch

torch = cuda_torch("the GPU decoder needs PyTorch")

import cv2  # noqa: E402
import simplejpeg  # noqa: E402
from facedet_server.app.config import ServerConfig  # noqa: E402
from facedet_server.app.server import limits_for  # noqa: E402
from facedet_server.errors import InvalidImage  # noqa: E402
from facedet_server.faces.options import Options  # noqa: E402
from facedet_server.image.inputs import EncodedImage  # noqa: E402
from facedet_server.image.nvjpeg import NvJpegDecoder, make_jpeg_decoder  # noqa: E402
from facedet_server.pipeline.gpu import GpuPipeline  # noqa: E402
from facedet_server.runtime.torch_cuda import TorchCudaBackend  # noqa: E402
from facedet_test_support import EXPECTED_FACES, PHOTOS, image_bytes  # noqa: E402
from PIL import Image  # noqa: E402

pytestmark = pytest.mark.gpu
LIMITS = limits_for(ServerConfig())  # the server's defaults
DEVICE = torch.device("cuda")


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


def without_huffman_tables(data: bytes) -> bytes:
    """The JPEG with its DHT segments cut out: the header still reads, the scan cannot."""
    out, pos = bytearray(data[:2]), 2
    while pos < len(data):
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker == 0xDA:  # start of scan: the entropy-coded data runs to the end
            out += data[pos:]
            break
        if marker != 0xC4:
            out += data[pos : pos + 2 + length]
        pos += 2 + length
    return bytes(out)


def cut_after_scan_header(data: bytes) -> bytes:
    sos = data.index(b"\xff\xda")
    (length,) = struct.unpack(">H", data[sos + 2 : sos + 4])
    return data[: sos + 2 + length] + b"\xff\xd9"


def test_pixels_match_libjpeg_turbo() -> None:
    decoder = NvJpegDecoder(DEVICE)
    datas = [image_bytes(photo) for photo in PHOTOS]
    for photo, data, image in zip(PHOTOS, datas, decoder.decode(datas), strict=True):
        assert image is not None, f"nvJPEG refused {photo}"
        assert image.device.type == "cuda" and image.dtype == torch.uint8
        want = host_rgb(data)
        assert tuple(image.shape) == want.shape, photo
        diff = np.abs(image.cpu().numpy().astype(np.int16) - want)
        # nvJPEG upsamples chroma differently from libjpeg-turbo: a level or so on average
        # (1.4 on 1.jpg, the worst), locally more at sharp colour edges.
        assert diff.mean() < 2.0, f"{photo}: mean difference {diff.mean():.2f} levels"


def test_an_image_nvjpeg_refuses_costs_only_itself() -> None:
    decoder = NvJpegDecoder(DEVICE)
    zidane = image_bytes("zidane.jpg")
    bad = [without_huffman_tables(zidane), cut_after_scan_header(zidane)]
    for data in bad:  # the front door (a header check) lets them through
        assert simplejpeg.decode_jpeg_header(data)[:2] == (720, 1280)
    decoded = decoder.decode([zidane, *bad, gray("bus.jpg"), zidane])
    assert decoded[1] is None or decoded[2] is None, "nvJPEG took both broken JPEGs"
    for k in (0, 3, 4):  # the others still decode on the GPU, in their own right
        image = decoded[k]
        assert image is not None and image.shape[0] == 3


def test_a_mixed_batch_through_the_detector(torch_backend: TorchCudaBackend) -> None:
    detector = GpuPipeline(torch_backend, LIMITS, gpu_decode="on")
    zidane = image_bytes("zidane.jpg")
    inputs = [zidane, progressive("bus.jpg"), without_huffman_tables(zidane), gray("zidane.jpg"), zidane]
    items = [detector.prepare(EncodedImage(data), Options()) for data in inputs]
    assert all(item.jpeg is not None for item in items), "all five go to nvJPEG"
    results = detector.infer_batch(items)
    counts = [None if isinstance(r, Exception) else len(r.faces) for r in results]
    assert counts[0] == counts[4] == EXPECTED_FACES["zidane.jpg"]
    assert counts[1] == EXPECTED_FACES["bus.jpg"]
    assert counts[3] is not None and counts[3] >= 1  # the players are still there in gray
    # Without its Huffman tables libjpeg-turbo may still decode it (standard tables) or refuse
    # it; either way it is answered on its own, and a refusal says why.
    if isinstance(results[2], Exception):
        assert isinstance(results[2], InvalidImage)


def test_auto_and_off() -> None:
    assert isinstance(make_jpeg_decoder("auto", DEVICE), NvJpegDecoder)
    assert isinstance(make_jpeg_decoder("on", DEVICE), NvJpegDecoder)
    assert make_jpeg_decoder("off", DEVICE) is None
