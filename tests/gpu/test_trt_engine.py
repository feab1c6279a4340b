"""The engine loader, the runner and the backend on a GPU.

Three tiers, each skipped with its reason where its needs are missing:
- the runner and backend on a fake TensorRT module whose contexts do real CUDA copies (needs
  cuda.bindings and a GPU): pool, buffers, profiles, graphs, threads, leaks;
- the real TensorRT module (full or lean, via the shim): runtime creation and deserialization
  errors, for real;
- a real plan, named by FACEDET_TRT_PLAN (none exists: TensorRT's builder installs on none of our
  machines): load it, run it thousands of times, watch memory.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

MiB = 1 << 20


def _gpu_reason() -> str | None:
    try:
        from facedet_trt import cuda
    except ImportError as exc:  # pragma: no cover
        return f"facedet_trt.cuda does not import: {exc}"
    if not cuda.available():
        return "cuda-python (cuda.bindings) is not installed"
    if cuda.device_count() == 0:
        return "no CUDA GPU visible"
    return None


def _trt_reason() -> str | None:
    from facedet_trt.trt_module import load_tensorrt

    try:
        load_tensorrt()
    except ImportError as exc:
        return f"no TensorRT module imports (tensorrt, tensorrt_lean, tensorrt_lean_bindings): {exc}"
    return None


GPU_REASON = _gpu_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=GPU_REASON or "")
TRT_REASON = _trt_reason() if GPU_REASON is None else GPU_REASON
needs_trt = pytest.mark.skipif(TRT_REASON is not None, reason=TRT_REASON or "")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- the runner on the fake TensorRT ----------------------------------------------------------


def fake_engine(**plan_kwargs: Any) -> Any:
    from facedet_trt.cuda import device_info
    from facedet_trt.plan import Engine
    from fake_tensorrt import fake_plan, fake_tensorrt, sidecar_for

    info = device_info(0)
    plan = fake_plan(**plan_kwargs)
    sidecar = sidecar_for(plan, gpu_name=info.name, compute_capability=info.compute_capability)
    # The device comes from CUDA here, so the sidecar check runs against the real GPU.
    return Engine.from_bytes(plan, sidecar, name="fake.plan", trt=fake_tensorrt())


def batch_of(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def expect(batch: np.ndarray, outputs: list[np.ndarray], k: int = 8) -> None:
    copy, head = outputs
    np.testing.assert_array_equal(copy, batch)
    np.testing.assert_array_equal(head, batch.reshape(batch.shape[0], -1)[:, :k])


@needs_gpu
def test_runner_round_trip_over_shapes() -> None:
    from facedet_trt.runner import TensorRTRunner

    engine = fake_engine()
    with TensorRTRunner(engine, num_streams=2) as runner:
        assert runner.max_batch == 4
        assert runner.output_names == ["copy", "head"]
        for i, shape in enumerate([(1, 3, 32, 32), (4, 3, 64, 64), (2, 3, 48, 32), (4, 3, 64, 64)]):
            batch = batch_of(shape, i)
            out = runner.run(batch)
            expect(batch, out)
            assert out[0].dtype == np.float32
        with pytest.raises(ValueError, match="outside every optimization profile"):
            runner.run(batch_of((5, 3, 64, 64)))
        with pytest.raises(ValueError, match="NCHW"):
            runner.run(np.zeros((3, 64, 64), np.float32))
        # Outputs are fresh arrays, not views of the reused pinned buffers.
        a = runner.run(batch_of((1, 3, 32, 32), 1))[0]
        runner.run(batch_of((1, 3, 32, 32), 2))
        np.testing.assert_array_equal(a, batch_of((1, 3, 32, 32), 1))
    engine.close()


@needs_gpu
def test_runner_output_order_and_fp16_input() -> None:
    from facedet_trt.runner import TensorRTRunner

    engine = fake_engine(input_dtype="float16")
    with TensorRTRunner(engine, output_names=["head", "copy"]) as runner:
        batch = batch_of((2, 3, 32, 32))
        head, copy = runner.run(batch)
        assert copy.dtype == np.float16
        np.testing.assert_array_equal(copy, batch.astype(np.float16))
        np.testing.assert_array_equal(head, batch.astype(np.float16).reshape(2, -1)[:, :8])
        with pytest.raises(TypeError):
            runner.run(np.zeros((1, 3, 32, 32), np.complex64))
    engine.close()


@needs_gpu
def test_runner_switches_profiles() -> None:
    from facedet_trt.runner import TensorRTRunner

    profiles = [
        ((1, 3, 32, 32), (1, 3, 32, 32), (2, 3, 32, 32)),
        ((1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64)),
    ]
    engine = fake_engine(profiles=profiles)
    with TensorRTRunner(engine, num_streams=1, cuda_graphs=True) as runner:
        for i in range(6):
            shape = (2, 3, 32, 32) if i % 2 == 0 else (3, 3, 64, 64)
            batch = batch_of(shape, i)
            expect(batch, runner.run(batch))
        assert runner.profile_for((2, 3, 32, 32)) == 0
        assert runner.profile_for((3, 3, 64, 64)) == 1
    engine.close()


@needs_gpu
def test_cuda_graphs_replace_enqueues() -> None:
    from facedet_trt.runner import TensorRTRunner

    engine = fake_engine()
    calls = engine.engine.calls
    with TensorRTRunner(engine, num_streams=1, cuda_graphs=True) as runner:
        for i in range(20):
            batch = batch_of((3, 3, 64, 64), i)
            expect(batch, runner.run(batch))
        # One plain run (TensorRT's warm-up after a shape change) and one captured; then replays.
        assert calls.execute == 2
        assert runner.graphs_captured == 1
        for i in range(5):
            batch = batch_of((1, 3, 32, 32), 100 + i)
            expect(batch, runner.run(batch))
        assert runner.graphs_captured == 2
        assert calls.execute == 4
        # Back to the first shape: its graph is still there.
        batch = batch_of((3, 3, 64, 64), 999)
        expect(batch, runner.run(batch))
        assert calls.execute == 4
    engine.close()


@needs_gpu
def test_failed_execute_is_reported_and_the_slot_survives() -> None:
    from facedet_trt.plan import EngineError
    from facedet_trt.runner import TensorRTRunner

    engine = fake_engine()
    with TensorRTRunner(engine, num_streams=1) as runner:
        engine.engine.fail_execute = True
        with pytest.raises(EngineError, match="execute_async_v3 failed: enqueueV3: injected failure"):
            runner.run(batch_of((1, 3, 32, 32)))
        engine.engine.fail_execute = False
        batch = batch_of((1, 3, 32, 32), 5)
        expect(batch, runner.run(batch))
    engine.close()


@needs_gpu
@pytest.mark.parametrize("graphs", [False, True])
def test_runner_is_thread_safe(graphs: bool) -> None:
    from facedet_trt.runner import TensorRTRunner

    engine = fake_engine()
    errors: list[BaseException] = []
    shapes = [(1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 64, 64), (3, 3, 32, 64)]
    with TensorRTRunner(engine, num_streams=3, cuda_graphs=graphs) as runner:

        def worker(t: int) -> None:
            try:
                for i in range(150):
                    batch = batch_of(shapes[(t + i) % len(shapes)], seed=t * 1000 + i)
                    expect(batch, runner.run(batch))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors, errors[:3]
    engine.close()


@needs_gpu
def test_closed_runner_refuses_work() -> None:
    from facedet_trt.runner import TensorRTRunner

    engine = fake_engine()
    runner = TensorRTRunner(engine)
    runner.close()
    runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        runner.run(batch_of((1, 3, 32, 32)))
    engine.close()


@needs_gpu
def test_close_waits_for_runs_in_flight() -> None:
    from facedet_trt.runner import TensorRTRunner

    engine = fake_engine()
    runner = TensorRTRunner(engine, num_streams=2)
    stop = threading.Event()
    outcomes: list[str] = []

    def worker() -> None:
        while not stop.is_set():
            try:
                runner.run(batch_of((4, 3, 64, 64)))
            except RuntimeError as exc:
                outcomes.append(str(exc))
                return

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    runner.close()
    stop.set()
    for th in threads:
        th.join()
    assert all("closed" in o for o in outcomes)
    engine.close()


@needs_gpu
def test_backend_on_the_fake_engine() -> None:
    from facedet_server.runtime.tensorrt import TensorRTBackend

    # A profile that starts at batch 2: the backend pads a single image and trims the result.
    engine = fake_engine(profiles=[((2, 3, 32, 32), (2, 3, 64, 64), (4, 3, 64, 64))])
    backend = TensorRTBackend("unused.plan", engine=engine, max_batch=16, device="cuda:0")
    try:
        assert backend.name == "tensorrt"
        assert backend.device == "cuda:0"
        assert backend.max_batch == 4  # the engine's limit, below the server's 16
        assert backend.model_sha256 == "f" * 64
        assert backend.spec.output_names == ("copy", "head")
        one = batch_of((1, 3, 64, 64))
        copy, head = backend.run(one)
        assert copy.shape == (1, 3, 64, 64)
        expect(one, [copy, head])
        with pytest.raises(ValueError, match="exceeds max_batch"):
            backend.run(batch_of((5, 3, 64, 64)))
    finally:
        backend.close()


@needs_gpu
@pytest.mark.slow
def test_runner_does_not_leak() -> None:
    from facedet_trt import cuda
    from facedet_trt.runner import TensorRTRunner

    def session(runs: int, graphs: bool) -> None:
        engine = fake_engine()
        with TensorRTRunner(engine, num_streams=2, cuda_graphs=graphs) as runner:
            for i in range(runs):
                runner.run(batch_of((1 + i % 4, 3, 64, 64), i % 7))
        engine.close()

    session(20, True)
    gc.collect()
    cuda.synchronize()
    free0, _ = cuda.mem_get_info()
    rss0 = rss_bytes()
    for i in range(100):  # many runners created and closed
        session(10, graphs=i % 2 == 0)
    session(5000, graphs=False)  # one runner used thousands of times
    session(5000, graphs=True)
    gc.collect()
    cuda.synchronize()
    free1, _ = cuda.mem_get_info()
    rss1 = rss_bytes()
    assert free0 - free1 < 64 * MiB, f"device memory fell by {(free0 - free1) / MiB:.1f} MiB"
    assert rss1 - rss0 < 64 * MiB, f"host RSS grew by {(rss1 - rss0) / MiB:.1f} MiB"


# ---- the real TensorRT module (full or lean) ---------------------------------------------------


def real_trt() -> ModuleType:
    from facedet_trt.trt_module import load_tensorrt

    return load_tensorrt()


def sidecar_for_this_machine(**overrides: Any) -> Any:
    from facedet_trt.cuda import device_info
    from facedet_trt.trt_module import tensorrt_version
    from fake_tensorrt import fake_plan, sidecar_for

    info = device_info(0)
    sidecar = sidecar_for(
        fake_plan(),
        tensorrt_version=tensorrt_version(real_trt()),
        gpu_name=info.name,
        compute_capability=info.compute_capability,
        # The lean runtime only takes version-compatible engines; claim one so the sidecar check
        # passes and the plan bytes reach TensorRT.
        version_compatible=True,
    )
    return dataclasses.replace(sidecar, **overrides)


@needs_trt
def test_real_tensorrt_rejects_garbage_cleanly(tmp_path: Path) -> None:
    from facedet_trt.plan import Engine, EngineError
    from facedet_trt.sidecar import write_sidecar

    plan = tmp_path / "garbage.plan"
    plan.write_bytes(os.urandom(4096))
    write_sidecar(plan, sidecar_for_this_machine())
    with pytest.raises(EngineError) as info:
        Engine.load(plan)
    msg = str(info.value)
    print(f"\n{real_trt().__name__} {getattr(real_trt(), '__version__', '?')}: {msg}")
    assert "could not deserialize engine garbage.plan (4096 bytes" in msg
    assert "facedet convert --engine" in msg


@needs_trt
def test_real_tensorrt_rejects_zeros_and_an_empty_plan(tmp_path: Path) -> None:
    from facedet_trt.plan import Engine, EngineError

    sidecar = sidecar_for_this_machine()
    with pytest.raises(EngineError, match="could not deserialize"):
        Engine.from_bytes(bytes(64), sidecar)
    with pytest.raises(EngineError, match="is empty"):
        Engine.from_bytes(b"", sidecar)


@needs_trt
def test_real_tensorrt_foreign_engine_is_refused_first() -> None:
    from facedet_trt.plan import Engine
    from facedet_trt.sidecar import EngineMismatch

    sidecar = sidecar_for_this_machine(gpu_name="NVIDIA A10", compute_capability="8.6")
    with pytest.raises(
        EngineMismatch, match=r"built for NVIDIA A10 \(compute 8\.6\).*facedet convert --engine"
    ):
        Engine.from_bytes(os.urandom(128), sidecar)


@needs_trt
def test_real_tensorrt_api_surface() -> None:
    trt = real_trt()
    for name in ("Runtime", "ILogger", "TensorIOMode", "DataType"):
        assert hasattr(trt, name), name
    from facedet_trt.plan import _make_logger

    logger = _make_logger(trt)
    runtime = trt.Runtime(logger)
    assert runtime is not None
    assert logger.take_errors() == []
    assert hasattr(runtime, "deserialize_cuda_engine")
    for attr in (
        "num_io_tensors",
        "get_tensor_name",
        "get_tensor_mode",
        "get_tensor_dtype",
        "get_tensor_profile_shape",
        "num_optimization_profiles",
        "create_execution_context",
    ):
        assert hasattr(trt.ICudaEngine, attr), attr
    for attr in (
        "set_optimization_profile_async",
        "set_input_shape",
        "set_tensor_address",
        "execute_async_v3",
        "get_tensor_shape",
    ):
        assert hasattr(trt.IExecutionContext, attr), attr


# ---- a real plan, where one exists ---------------------------------------------------------------

PLAN = os.environ.get("FACEDET_TRT_PLAN", "")
PLAN_REASON = TRT_REASON or (
    None
    if PLAN and Path(PLAN).is_file()
    else "no real TensorRT plan: the builder installs on none of our machines; set "
    "FACEDET_TRT_PLAN=/path/model.plan (with model.plan.json beside it) to run this"
)


@pytest.mark.skipif(PLAN_REASON is not None, reason=PLAN_REASON or "")
@pytest.mark.slow
def test_real_plan_runs_without_leaking() -> None:
    from facedet_server.runtime.tensorrt import TensorRTBackend
    from facedet_trt import cuda

    backend = TensorRTBackend(PLAN, num_streams=2)
    profile = backend.runner.profiles[0]
    batch = np.random.default_rng(0).random(profile.opt, dtype=np.float32)
    first = backend.runner.run(batch)
    gc.collect()
    free0, _ = cuda.mem_get_info()
    rss0 = rss_bytes()
    for _ in range(3000):
        out = backend.runner.run(batch)
    for a, b in zip(first, out, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    gc.collect()
    free1, _ = cuda.mem_get_info()
    rss1 = rss_bytes()
    backend.close()
    assert free0 - free1 < 64 * MiB
    assert rss1 - rss0 < 64 * MiB
