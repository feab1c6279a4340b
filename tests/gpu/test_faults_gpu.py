"""A failing model runtime on the GPU (torch backend), injected with the test-only
FACEDET_FAULT_INJECTION switch into `DeviceBackend.forward` (runtime/faults.py): as on the CPU
(tests/test_faults.py), one fault fails one call with INTERNAL, three in a row turn health
NOT_SERVING until the server has rebuilt the runtime on the GPU, and the rebuild does not leave
the old model's GPU memory behind."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from facedet_test_support import arm_faults, cuda_torch, gpu_mib, image_bytes, wait_for

cuda_torch("the torch-CUDA backend needs PyTorch")

from facedet.v1 import face_detector_pb2 as pb  # noqa: E402
from facedet.v1 import face_detector_pb2_grpc as pb_grpc  # noqa: E402
from facedet_test_support import CHANNEL_OPTIONS, ServerFactory  # noqa: E402
from test_faults import NOT_SERVING, SERVING, ZIDANE_FACES, HealthFollower, detect  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.timeout(600)
def test_cuda_faults_on_the_gpu_path_fail_their_calls_and_the_runtime_is_rebuilt(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    control = tmp_path / "faults"
    server = start_server(
        "--backend", "torch", "--compile", "off", "--max-batch", "1", "--batch-workers", "1",
        "--processes", "1",  # the runtime in this process (the automatic layout has an engine)
        unix=False, start=False, env={"FACEDET_FAULT_INJECTION": str(control)},
    )  # fmt: skip
    server.start(timeout=300)
    assert server.proc is not None
    data = image_bytes("zidane.jpg")
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FaceDetectorStub(channel)
        health = HealthFollower(channel)
        wait_for(lambda: health.statuses == [SERVING], 10, "health to report SERVING")
        for _ in range(5):
            assert detect(stub, data) == (grpc.StatusCode.OK, "", ZIDANE_FACES)
        gpu_before = gpu_mib(server.proc.pid)

        arm_faults(control, "1 cuda")
        code, message, _ = detect(stub, data)
        assert code == grpc.StatusCode.INTERNAL and "CUDA error" in message, (code, message)
        assert detect(stub, data) == (grpc.StatusCode.OK, "", ZIDANE_FACES)

        arm_faults(control, "3 cuda")
        for _ in range(3):
            assert detect(stub, data)[0] == grpc.StatusCode.INTERNAL
        wait_for(lambda: NOT_SERVING in health.statuses, 10, "health to report NOT_SERVING")
        wait_for(lambda: health.statuses[-1:] == [SERVING], 240, "health to report SERVING after the rebuild")
        for _ in range(5):
            assert detect(stub, data) == (grpc.StatusCode.OK, "", ZIDANE_FACES)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.backend == "torch"
        gpu_after = gpu_mib(server.proc.pid)
        health.stop()
    assert health.statuses == [SERVING, NOT_SERVING, SERVING], health.statuses
    # The old model and its CUDA graphs are freed; allow for the caching allocator's slack.
    assert gpu_after < gpu_before * 1.5 + 256, (gpu_before, gpu_after)
