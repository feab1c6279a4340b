"""The GPU pipeline's logic (GpuPipeline: header checks, batch letterbox, our PyTorch model,
score filter and NMS in torch) run on the CPU build of torch, against the ONNX Runtime path.
The real GPU runs are tests/gpu; these catch logic errors on every machine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the GPU pipeline needs PyTorch (make test installs the CPU build)"
)

from facedet_server.app.config import ServerConfig  # noqa: E402
from facedet_server.app.server import limits_for  # noqa: E402
from facedet_server.errors import InvalidImage  # noqa: E402
from facedet_server.faces.options import Options  # noqa: E402
from facedet_server.image.inputs import EncodedImage, RawFrame  # noqa: E402
from facedet_server.pipeline.gpu import GpuPipeline  # noqa: E402
from facedet_server.pipeline.gpu_prepare import GpuPreparer  # noqa: E402
from facedet_server.pipeline.host import HostPipeline  # noqa: E402
from facedet_server.runtime.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from facedet_server.runtime.torch_cuda import TorchCudaBackend  # noqa: E402
from facedet_test_support import EXPECTED_FACES, MODEL, image_bytes, require  # noqa: E402

LIMITS = limits_for(ServerConfig())  # the server's defaults


@pytest.fixture(scope="module")
def backend() -> TorchCudaBackend:
    return TorchCudaBackend(require(MODEL, "model file"), max_batch=4, device="cpu")


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


@pytest.mark.parametrize("name", ["zidane.jpg", "bus.jpg"])
def test_gpu_pipeline_on_cpu_finds_the_onnxruntime_faces(name: str, backend: TorchCudaBackend) -> None:
    data = image_bytes(name)
    ref = (
        HostPipeline(OnnxRuntimeBackend(require(MODEL, "model file")), LIMITS)
        .detect(EncodedImage(data))
        .faces
    )
    got = GpuPipeline(backend, LIMITS, rectangular=False).detect(EncodedImage(data)).faces
    assert len(ref) == EXPECTED_FACES[name] == len(got)
    for face in ref:
        assert max(_box_iou(face, other) for other in got) >= 0.9


def test_a_batch_of_mixed_inputs_gives_each_its_own_faces(backend: TorchCudaBackend) -> None:
    detector = GpuPipeline(backend, LIMITS)
    names = ["zidane.jpg", "bus.jpg", "zidane.jpg"]
    items = [detector.prepare(EncodedImage(image_bytes(n)), Options()) for n in names]
    blank = RawFrame(64, 48, "RGB8", bytes(64 * 48 * 3))
    items.append(detector.prepare(blank, Options()))
    results = detector.infer_batch(items)
    singles = [detector.detect(EncodedImage(image_bytes(n))).faces for n in names]
    for result, single in zip(results, singles, strict=False):
        assert not isinstance(result, Exception)
        np.testing.assert_allclose(result.faces, single, atol=0.05)
    blank_result = results[3]
    assert not isinstance(blank_result, Exception) and len(blank_result.faces) == 0


def test_prepare_inline_checks_only_the_header_and_leaves_the_rest_to_the_pool(
    backend: TorchCudaBackend,
) -> None:
    # gpu_decode on, as on a GPU with nvJPEG: the inline step never touches the GPU.
    preparer = GpuPreparer(backend.spec, dataclasses.replace(LIMITS, max_pixels=1280 * 720), gpu_decode=True)
    zidane = image_bytes("zidane.jpg")
    prepared = preparer.prepare_inline(EncodedImage(zidane), Options())
    assert prepared is not None
    assert (prepared.width, prepared.height, prepared.jpeg, prepared.pixels) == (1280, 720, zidane, None)
    # PNG and raw frames need a CPU decode: the decode pool's job, not the event loop's.
    assert preparer.prepare_inline(RawFrame(4, 4, "RGB8", bytes(48)), Options()) is None
    assert preparer.prepare_inline(EncodedImage(b"\x89PNG\r\n\x1a\n" + bytes(64)), Options()) is None
    tight = dataclasses.replace(preparer, limits=dataclasses.replace(LIMITS, max_pixels=1280 * 720 - 1))
    with pytest.raises(InvalidImage, match="over the server limit"):
        tight.prepare_inline(EncodedImage(zidane), Options())
    with pytest.raises(InvalidImage, match="header"):
        preparer.prepare_inline(EncodedImage(zidane[:3] + b"\x00" * 40), Options())
    # --gpu-decode off: every JPEG goes to the pool
    assert (
        dataclasses.replace(preparer, gpu_decode=False).prepare_inline(EncodedImage(zidane), Options())
        is None
    )
    # A GpuPipeline off the GPU (this CPU build) never decodes inline, whatever it is asked.
    assert (
        GpuPipeline(backend, LIMITS, gpu_decode="on").prepare_inline(EncodedImage(zidane), Options()) is None
    )


def test_gpu_decode_choices_are_checked_and_on_says_why_it_cannot() -> None:
    from facedet_server.app.config import SETTINGS
    from facedet_server.image.nvjpeg import CHOICES, make_jpeg_decoder

    (setting,) = [s for s in SETTINGS if s.name == "gpu_decode"]
    assert setting.choices == CHOICES  # the CLI offers exactly what the pipeline understands
    with pytest.raises(ValueError, match="gpu_decode must be one of"):
        make_jpeg_decoder("nvdec", torch.device("cuda"))
    for choice in CHOICES:  # a CPU device decodes on the CPU, whatever was asked
        assert make_jpeg_decoder(choice, torch.device("cpu")) is None
    # This machine has no CUDA device: auto quietly decodes on the CPU, on refuses to start.
    assert make_jpeg_decoder("auto", torch.device("cuda")) is None
    with pytest.raises(RuntimeError, match="nvJPEG cannot run here: no CUDA device"):
        make_jpeg_decoder("on", torch.device("cuda"))
