"""The torch-CUDA path on a real GPU (run through the device tool; skipped elsewhere): it must
find the same faces as ONNX Runtime on the CPU, nvJPEG must not change the faces, and a server
must not grow in host or GPU memory over 20,000 requests."""

from __future__ import annotations

import time

import numpy as np
import pytest
from facedet_test_support import cuda_torch

torch = cuda_torch("the torch-CUDA backend needs PyTorch")

import simplejpeg  # noqa: E402
from facedet.v1 import face_detector_pb2 as pb  # noqa: E402
from facedet_server.app.config import ServerConfig  # noqa: E402
from facedet_server.app.server import limits_for  # noqa: E402
from facedet_server.image.inputs import EncodedImage, RawFrame  # noqa: E402
from facedet_server.pipeline.gpu import GpuPipeline  # noqa: E402
from facedet_server.pipeline.host import HostPipeline  # noqa: E402
from facedet_server.runtime.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from facedet_server.runtime.torch_cuda import TorchCudaBackend  # noqa: E402
from facedet_test_support import (  # noqa: E402
    EXPECTED_FACES,
    MODEL,
    PHOTOS,
    TRIMMED,
    ServerFactory,
    gpu_mib,
    image_bytes,
    open_channels,
    rss_kib,
    send_stream_frames,
)

pytestmark = pytest.mark.gpu
LIMITS = limits_for(ServerConfig())  # the server's defaults


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def assert_same_faces(ref: np.ndarray, got: np.ndarray, landmark_px: float = 2.0) -> None:
    """Every reference face has a partner with IoU >= 0.9 and landmarks within landmark_px."""
    assert len(got) == len(ref), f"{len(got)} faces, reference has {len(ref)}"
    unused = list(range(len(got)))
    for face in ref:
        best = max(unused, key=lambda j: _iou(face, got[j]))
        assert _iou(face, got[best]) >= 0.9, f"no match for {face[:5]} (best IoU {_iou(face, got[best]):.3f})"
        worst = np.abs(face[5:] - got[best][5:]).max()
        assert worst <= landmark_px, f"landmarks differ by {worst:.2f} px"
        unused.remove(best)


@pytest.fixture(scope="module")
def cpu_detector() -> HostPipeline:
    return HostPipeline(OnnxRuntimeBackend(MODEL), LIMITS)


@pytest.mark.parametrize("name", sorted(EXPECTED_FACES))
def test_torch_cuda_matches_onnxruntime_cpu(
    name: str, cpu_detector: HostPipeline, torch_backend: TorchCudaBackend
) -> None:
    data = image_bytes(name)
    ref = cpu_detector.detect(EncodedImage(data)).faces
    # Same decoder and 640x640 square input as the CPU path, so only the runtime (FP16 CUDA vs
    # FP32 ONNX Runtime) differs; nvJPEG is compared on its own below.
    got = (
        GpuPipeline(torch_backend, LIMITS, gpu_decode="off", rectangular=False)
        .detect(EncodedImage(data))
        .faces
    )
    assert len(ref) == EXPECTED_FACES[name]
    assert_same_faces(ref, got)


@pytest.fixture(scope="module")
def compiled_backend() -> TorchCudaBackend:
    backend = TorchCudaBackend(MODEL, max_batch=8, compile_mode="default")
    backend.warm_up([(640, 640), (640, 384)])  # the shapes that run compiled
    return backend


@pytest.mark.parametrize("name", sorted(EXPECTED_FACES))
def test_compiled_model_matches_onnxruntime_cpu(
    name: str, cpu_detector: HostPipeline, compiled_backend: TorchCudaBackend, torch_backend: TorchCudaBackend
) -> None:
    """What the server runs by default: inductor's kernels captured in the per-bucket graphs."""
    data = image_bytes(name)
    ref = cpu_detector.detect(EncodedImage(data)).faces
    square = GpuPipeline(compiled_backend, LIMITS, gpu_decode="off", rectangular=False)
    assert_same_faces(ref, square.detect(EncodedImage(data)).faces)
    rect = GpuPipeline(compiled_backend, LIMITS).detect(EncodedImage(data)).faces  # nvJPEG, 640x384 for 16:9
    eager = GpuPipeline(torch_backend, LIMITS).detect(EncodedImage(data)).faces
    assert_same_faces(eager, rect)


@pytest.mark.parametrize("name", sorted(EXPECTED_FACES))
def test_rectangular_letterbox_finds_the_same_faces(name: str, torch_backend: TorchCudaBackend) -> None:
    data = image_bytes(name)
    square = GpuPipeline(torch_backend, LIMITS, rectangular=False).detect(EncodedImage(data)).faces
    rect = GpuPipeline(torch_backend, LIMITS, rectangular=True).detect(EncodedImage(data)).faces
    assert_same_faces(square, rect, landmark_px=6.0)


@pytest.mark.parametrize("name", PHOTOS)
def test_nvjpeg_and_libjpeg_turbo_give_the_same_faces(name: str, torch_backend: TorchCudaBackend) -> None:
    data = image_bytes(name)
    on_gpu = GpuPipeline(torch_backend, LIMITS, gpu_decode="on").detect(EncodedImage(data)).faces
    # libjpeg-turbo at full size, sent on as a raw frame: only the decoder differs (the CPU
    # path's own DCT-reduced decode of large JPEGs would change the pixels far more).
    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB")
    frame = RawFrame(rgb.shape[1], rgb.shape[0], "RGB8", rgb.tobytes())
    on_cpu = GpuPipeline(torch_backend, LIMITS, gpu_decode="off").detect(frame).faces
    strong = on_cpu[on_cpu[:, 4] >= 0.6]  # faces near the threshold may flip on decoder rounding
    assert len(strong) > 0
    best = np.array([max(_iou(face, other) for other in on_gpu) for face in strong])
    assert (best >= 0.9).all(), f"{(best < 0.9).sum()} of {len(strong)} faces moved"


def test_batched_results_equal_single_results(torch_backend: TorchCudaBackend) -> None:
    detector = GpuPipeline(torch_backend, LIMITS)
    names = ["zidane.jpg", "sample.jpg", "bus.jpg", "1.jpg"]
    from facedet_server.faces.options import Options

    items = [detector.prepare(EncodedImage(image_bytes(n)), Options()) for n in names]
    batched = detector.infer_batch(items)
    for name, result in zip(names, batched, strict=True):
        assert not isinstance(result, Exception)
        single = detector.detect(EncodedImage(image_bytes(name))).faces
        assert_same_faces(single, result.faces, landmark_px=0.5)


def test_no_memory_growth_over_20000_requests(start_torch_server: ServerFactory) -> None:
    server = start_torch_server(
        "--max-batch",
        "32",
        "--batch-workers",
        "2",
        "--stream-window",
        "32",
        "--max-queue",
        "1024",
        "--memory-trim-interval",
        "1",
    )  # the default --compile: three shapes compiled first (cold cache)
    assert server.proc is not None
    pid = server.proc.pid
    with open_channels(server.target, 16) as channels:
        send_stream_frames(channels, 4000)  # warm-up: every batch bucket gets used and captured
        time.sleep(TRIMMED)  # nothing in flight, heaps trimmed: RSS is what is live
        rss0, gpu0 = rss_kib(pid), gpu_mib(pid)
        send_stream_frames(channels, 20000)
        time.sleep(TRIMMED)
        rss1, gpu1 = rss_kib(pid), gpu_mib(pid)
    print(f"host RSS {rss0} -> {rss1} KiB, GPU {gpu0} -> {gpu1} MiB")
    assert rss1 <= rss0 * 1.02, f"host RSS grew {rss0} -> {rss1} KiB"
    assert gpu1 <= gpu0 * 1.02, f"GPU memory grew {gpu0} -> {gpu1} MiB"


def test_batching_settings_left_automatic_are_the_gpus(start_torch_server: ServerFactory) -> None:
    """No batching flags: torch on a CUDA device runs what the GPU benchmarks used (64 images a
    batch, three in flight, a queue of 1024) and a 1 ms switch interval, not the CPU's values."""
    server = start_torch_server("--compile", "off")
    with server.stub() as stub:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert (info.backend, info.max_batch, info.limits.max_queue) == ("torch", 64, 1024), info
    (loaded,) = [r for r in server.log_records() if r.get("event") == "model_loaded"]
    assert (loaded["max_batch"], loaded["batch_workers"], loaded["max_queue"]) == (64, 3, 1024), loaded
    assert loaded["switch_interval_s"] == pytest.approx(0.001), loaded
