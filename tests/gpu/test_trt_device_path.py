"""The TensorRT backend as a `DeviceBackend`: the GPU pipeline (GPU letterbox, batched NMS) over a
plan on the fake TensorRT module (tests/fake_tensorrt.py), whose contexts do real CUDA copies.

The fake computes no network: its one output is (N, K, 15), the first K * 15 input values of each
image. With the spec's scale 1.0 those are the first pixels of the image's red channel, so a test
image spells its own candidates there, and the faces the pipeline returns show that the batch, the
pointers, the per-image rows and the stream order were all right. Needs a GPU, CUDA torch and
cuda.bindings; skipped elsewhere.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from facedet_test_support import cuda_torch

torch = cuda_torch("the TensorRT device path hands TensorRT torch tensors")

from facedet_server.faces.options import Options  # noqa: E402
from facedet_server.image.inputs import RawFrame  # noqa: E402
from facedet_server.pipeline.base import Detection, Limits  # noqa: E402
from facedet_server.pipeline.gpu import GpuPipeline  # noqa: E402
from facedet_server.runtime.tensorrt import TensorRTBackend  # noqa: E402

K = 4  # candidates per image
SIZE = 64  # the pipeline's input size, the profile's largest side
LIMITS = Limits(max_pixels=50_000_000, max_faces=1000)


def _cuda_bindings_reason() -> str | None:
    from facedet_trt import cuda

    return None if cuda.available() else "cuda-python (cuda.bindings) is not installed"


CUDA_REASON = _cuda_bindings_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(CUDA_REASON is not None, reason=CUDA_REASON or "")]


def decoded_spec(output: str = "candidates") -> dict[str, Any]:
    return {
        "name": "fake-decoded",
        "strides": [8],
        "anchors": [[[4.0, 5.0]]],
        "input_name": "data",
        "output_names": [output],
        "output_kind": "decoded",
        "batch_size": None,
        "input_height": None,
        "input_width": None,
        "scale": 1.0,  # the tensor is the pixels, so the candidates are what the image spells
    }


def fake_backend(
    *, input_dtype: str = "float32", min_batch: int = 1, decoded: bool = True, max_batch: int = 4
) -> TensorRTBackend:
    from facedet_trt.cuda import device_info
    from facedet_trt.plan import Engine
    from fake_tensorrt import fake_plan, fake_tensorrt, sidecar_for

    info = device_info(0)
    outputs = {"candidates": {"kind": "head", "k": K, "width": 15}}
    plan = fake_plan(
        input_dtype=input_dtype,
        profiles=[((min_batch, 3, 32, 32), (max_batch, 3, SIZE, SIZE), (max_batch, 3, SIZE, SIZE))],
        outputs=outputs,
    )
    sidecar = sidecar_for(
        plan,
        gpu_name=info.name,
        compute_capability=info.compute_capability,
        model_spec=decoded_spec() if decoded else None,
    )
    engine = Engine.from_bytes(plan, sidecar, name="fake.plan", trt=fake_tensorrt())
    return TensorRTBackend("unused.plan", engine=engine, max_batch=16, device="cuda:0")


def candidate(cx: int, cy: int, w: int, h: int, score: int = 1) -> list[int]:
    """[cx, cy, w, h, score, 5 landmarks]: the eyes, nose and mouth corners inside the box."""
    return [cx, cy, w, h, score, cx - 2, cy - 2, cx + 2, cy - 2, cx, cy, cx - 2, cy + 2, cx + 2, cy + 2]


def expected_face(c: list[int]) -> list[float]:
    cx, cy, w, h, score = c[:5]
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score, *c[5:]]


def frame_spelling(candidates: list[list[int]], width: int = SIZE, height: int = SIZE) -> RawFrame:
    """An RGB frame of the network's size (so the letterbox is the identity) whose red channel
    starts with `candidates`, K rows of 15 values (missing rows score 0)."""
    values = np.zeros(K * 15, np.uint8)
    flat = [v for c in candidates for v in c]
    values[: len(flat)] = flat
    pixels = np.zeros((height, width, 3), np.uint8)
    red = pixels[..., 0].reshape(-1)  # a view: row-major, like the NCHW tensor's first plane
    red[: values.size] = values
    return RawFrame(width, height, "RGB8", pixels.tobytes())


def by_x(faces: np.ndarray) -> np.ndarray:
    return faces[np.argsort(faces[:, 0], kind="stable")]


def test_only_a_decoded_plan_is_a_device_backend() -> None:
    decoded = fake_backend()
    heads = fake_backend(decoded=False)
    try:
        assert decoded.device_backend() is decoded
        assert heads.device_backend() is None  # raw heads decode on the host: the host pipeline
        assert decoded.max_batch == 4
        assert decoded.dtype == torch.float32
        assert decoded.torch_device == torch.device("cuda:0")
        assert decoded.device_settings() == {"profiles": ["p0: (1, 3, 32, 32)..(4, 3, 64, 64)"]}
    finally:
        decoded.close()
        heads.close()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_forward_binds_torch_memory_and_runs_on_the_callers_stream(dtype: str) -> None:
    backend = fake_backend(input_dtype=dtype)
    fake = backend._engine.engine  # the fake ICudaEngine, which records what it was asked
    try:
        assert backend.dtype == getattr(torch, dtype)
        stream = backend.stream()
        assert backend.stream() is stream  # one per thread, reused
        batch = torch.arange(3 * 3 * 48 * 64, dtype=backend.dtype, device="cuda").reshape(3, 3, 48, 64) % 251
        with torch.cuda.stream(stream):
            out = backend.forward(batch)
            stream.synchronize()
        assert out.shape == (3, K, 15) and out.dtype == backend.dtype and out.device == batch.device
        torch.testing.assert_close(out, batch.reshape(3, -1)[:, : K * 15].reshape(3, K, 15))
        (context,) = fake.contexts
        assert context.addresses["data"] == batch.data_ptr()  # contiguous already: no copy
        assert context.addresses["candidates"] == out.data_ptr()
        assert fake.calls.streams == [stream.cuda_stream]
        assert context.shape == (3, 3, 48, 64)
        with pytest.raises(ValueError, match="exceeds max_batch"):
            backend.forward(torch.zeros((5, 3, 64, 64), dtype=backend.dtype, device="cuda"))
    finally:
        backend.close()


def test_forward_pads_below_the_profiles_smallest_batch() -> None:
    backend = fake_backend(min_batch=2)
    fake = backend._engine.engine
    try:
        one = torch.rand((1, 3, 64, 64), device="cuda") * 255
        with torch.cuda.stream(backend.stream()):
            out = backend.forward(one)
            backend.stream().synchronize()
        assert out.shape == (1, K, 15)
        torch.testing.assert_close(out, one.reshape(1, -1)[:, : K * 15].reshape(1, K, 15))
        assert fake.contexts[0].shape == (2, 3, 64, 64)  # TensorRT saw the padded batch
    finally:
        backend.close()


def test_each_inference_thread_gets_its_own_context_and_stream() -> None:
    backend = fake_backend()
    fake = backend._engine.engine
    seen: dict[str, int] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            stream = backend.stream()
            batch = torch.rand((2, 3, 32, 32), device="cuda")
            with torch.cuda.stream(stream):
                for _ in range(20):
                    out = backend.forward(batch)
                stream.synchronize()
            torch.testing.assert_close(out, batch.reshape(2, -1)[:, : K * 15].reshape(2, K, 15))
            seen[name] = stream.cuda_stream
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert not errors, errors
        assert len(fake.contexts) == 2
        assert len(set(seen.values())) == 2
        assert sorted(set(fake.calls.streams)) == sorted(seen.values())
    finally:
        backend.close()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_pipeline_over_tensorrt_end_to_end(dtype: str) -> None:
    backend = fake_backend(input_dtype=dtype)
    fake = backend._engine.engine
    pipeline = GpuPipeline(backend, LIMITS, input_size=SIZE, gpu_decode="off")
    try:
        pipeline.warm_up()
        executes = fake.calls.execute
        a = [candidate(20, 30, 10, 12), [0] * 15, candidate(48, 40, 8, 8)]
        b = [[0] * 15, candidate(10, 10, 6, 6)]
        wide = [candidate(40, 16, 12, 10)]
        items = [
            pipeline.prepare(frame_spelling(a), Options()),
            pipeline.prepare(frame_spelling(b), Options()),
            pipeline.prepare(frame_spelling(wide, height=32), Options()),  # a 64x32 input
        ]
        results = pipeline.infer_batch(items)
        assert all(isinstance(r, Detection) for r in results), results
        got_a, got_b, got_wide = (r for r in results if isinstance(r, Detection))
        np.testing.assert_allclose(by_x(got_a.faces), [expected_face(a[0]), expected_face(a[2])])
        np.testing.assert_allclose(got_b.faces, [expected_face(b[1])])
        np.testing.assert_allclose(got_wide.faces, [expected_face(wide[0])])
        # One model call per input shape: the two 64x64 images shared one.
        assert fake.calls.execute - executes == 2
        assert (got_a.timing.batch_size, got_b.timing.batch_size, got_wide.timing.batch_size) == (2, 2, 1)
        # Every run was queued on the pipeline thread's stream, behind its letterbox.
        assert set(fake.calls.streams) == {backend.stream().cuda_stream}
        # detect() runs the same path for one image.
        np.testing.assert_allclose(pipeline.detect(frame_spelling(b)).faces, [expected_face(b[1])])
    finally:
        backend.close()
