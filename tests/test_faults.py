"""A failing model runtime, injected through the test-only FACEDET_FAULT_INJECTION switch
(runtime/faults.py) into a real server: the failed batch gets INTERNAL with the runtime's
message, three failures in a row turn health NOT_SERVING and calls UNAVAILABLE until the server
has rebuilt the runtime (serving/runtime_health.py), and nothing else in flight is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_server.runtime.faults import parse_control
from facedet_test_support import (
    CHANNEL_OPTIONS,
    EXPECTED_FACES,
    MODEL,
    Server,
    ServerFactory,
    arm_faults,
    faulty_server,
    image_bytes,
    run_cli,
    wait_for,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ZIDANE_FACES = EXPECTED_FACES["zidane.jpg"]


class HealthFollower:
    """Every status a Health/Watch reports, from a background thread."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.statuses: list[int] = []
        self._watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=120
        )
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for response in self._watch:
                self.statuses.append(response.status)
        except grpc.RpcError:
            pass  # cancelled in stop()

    def stop(self) -> None:
        self._watch.cancel()
        self._thread.join(10)


def detect(stub: pb_grpc.FaceDetectorStub, data: bytes) -> tuple[grpc.StatusCode, str, int]:
    try:
        response = stub.DetectFaces(pb.DetectFacesRequest(encoded=data), timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details()), 0  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, "", len(response.faces)


def test_fault_injection_refuses_a_switch_that_is_not_a_control_file_path() -> None:
    """FACEDET_FAULT_INJECTION=1 (a boolean-looking accident) stops the server with a message,
    rather than arming anything."""
    result = run_cli(
        "serve",
        "--model",
        str(MODEL),
        "--listen",
        "127.0.0.1:0",
        env={"FACEDET_FAULT_INJECTION": "1"},
        timeout=90,
    )
    assert result.returncode != 0
    assert "FACEDET_FAULT_INJECTION='1'" in result.stderr and "absolute path" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("3", (3, "exception", 0.0)),
        ("1 cuda", (1, "cuda", 0.0)),
        (" 100 slow 150\n", (100, "slow", 150.0)),
        ("2 slow 0.5", (2, "slow", 0.5)),
    ],
)
def test_control_file_grammar(text: str, parsed: tuple[int, str, float]) -> None:
    assert parse_control(text) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "-1",
        "1 oops",
        "1 cuda 5",
        "1 slow",
        "1 slow 0",
        "1 slow -5",
        "1 slow nan",
        "1 slow inf",
        "1 slow 600000",
        "1 slow 5 6",
    ],
)
def test_control_file_refuses_what_is_not_the_grammar(text: str) -> None:
    with pytest.raises(ValueError):
        parse_control(text)


def test_a_normal_server_has_no_fault_injection(server: Server) -> None:
    events = {r.get("event") for r in server.log_records()}
    assert "model_loaded" in events and "fault_injection_enabled" not in events, events


@pytest.mark.timeout(120)
def test_one_failed_model_run_fails_only_its_call(start_server: ServerFactory, tmp_path: Path) -> None:
    """A CUDA-like error in one model run, with a stream and unary calls in flight: exactly one
    request fails, INTERNAL with the runtime's message; every other call and frame is answered,
    the stream goes on, and health stays SERVING (one failure is no unusable runtime)."""
    server, control = faulty_server(start_server, tmp_path)
    data = image_bytes("zidane.jpg")
    stop = threading.Event()
    frames: list[pb.DetectFacesResponse] = []
    stream_error: list[BaseException] = []
    unary: list[tuple[grpc.StatusCode, str, int]] = []

    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FaceDetectorStub(channel)
        health = HealthFollower(channel)
        wait_for(lambda: health.statuses == [SERVING], 10, "health to report SERVING")

        def requests() -> Iterator[pb.DetectFacesRequest]:
            i = 0
            while not stop.is_set():
                yield pb.DetectFacesRequest(encoded=data, frame_id=i)
                i += 1

        def stream() -> None:
            try:
                frames.extend(stub.StreamDetectFaces(requests(), timeout=90))
            except BaseException as exc:
                stream_error.append(exc)

        def calls() -> None:
            while not stop.is_set():
                unary.append(detect(stub, data))

        threads = [threading.Thread(target=stream), threading.Thread(target=calls)]
        for t in threads:
            t.start()
        wait_for(lambda: len(unary) >= 3 and len(frames) >= 3, 30, "load to be flowing")
        arm_faults(control, "1 cuda")
        wait_for(lambda: not control.exists(), 10, "the server to take the control file")
        time.sleep(1.0)  # more calls after the fault
        stop.set()
        for t in threads:
            t.join(60)
        health.stop()

    assert not stream_error, f"the stream broke: {stream_error}"
    frame_errors = [f for f in frames if f.HasField("error")]
    call_errors = [u for u in unary if u[0] != grpc.StatusCode.OK]
    failures = [(e.error.code, e.error.message) for e in frame_errors] + [
        (c[0].value[0], c[1]) for c in call_errors
    ]
    assert len(failures) == 1, failures
    code, message = failures[0]
    assert code == grpc.StatusCode.INTERNAL.value[0], failures
    assert "model runtime failed" in message and "CUDA error" in message, message
    assert [f.frame_id for f in frames] == list(range(len(frames))), "stream responses out of order"
    assert all(len(f.faces) == ZIDANE_FACES for f in frames if not f.HasField("error"))
    assert all(u[2] == ZIDANE_FACES for u in unary if u[0] == grpc.StatusCode.OK)
    assert health.statuses == [SERVING], health.statuses
    events = [r.get("event") for r in server.log_records()]
    assert events.count("fault_injected") == 1 and "runtime_failed" in events, events
    assert "runtime_unusable" not in events, events


@pytest.mark.timeout(120)
def test_failures_in_a_row_make_the_runtime_unusable_until_it_is_rebuilt(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """Five faults: the first three calls get INTERNAL, which makes the runtime unusable: health
    NOT_SERVING and calls UNAVAILABLE at once. The server rebuilds the runtime; the next two
    faults fail the first two rebuilds' warm-up runs, the third rebuild serves: health SERVING
    again and calls answered as before."""
    server, control = faulty_server(start_server, tmp_path)
    data = image_bytes("zidane.jpg")
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FaceDetectorStub(channel)
        health = HealthFollower(channel)
        wait_for(lambda: health.statuses == [SERVING], 10, "health to report SERVING")
        assert detect(stub, data) == (grpc.StatusCode.OK, "", ZIDANE_FACES)

        arm_faults(control, "5 exception")
        first = [detect(stub, data) for _ in range(3)]
        for code, message, _ in first:
            assert code == grpc.StatusCode.INTERNAL, first
            assert "model runtime failed" in message and "injected fault" in message, message
        wait_for(lambda: NOT_SERVING in health.statuses, 5, "health to report NOT_SERVING")
        code, message, _ = detect(stub, data)
        assert code == grpc.StatusCode.UNAVAILABLE, (code, message)
        assert "unusable" in message and "3 model runs failed in a row" in message, message

        wait_for(lambda: health.statuses[-1:] == [SERVING], 60, "health to report SERVING after the rebuild")
        assert health.statuses == [SERVING, NOT_SERVING, SERVING], health.statuses
        for _ in range(3):
            assert detect(stub, data) == (grpc.StatusCode.OK, "", ZIDANE_FACES)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.backend == "onnxruntime" and info.name == "yolov5n-0.5"
        health.stop()

    events = [r.get("event") for r in server.log_records()]
    assert events.count("fault_injected") == 5, events
    assert events.count("runtime_unusable") == 1, events
    assert events.count("runtime_reload_failed") == 2, events
    assert events.count("runtime_reloaded") == 1, events
    assert server.stop() == 0, server.log_text()


@pytest.mark.timeout(120)
def test_a_fault_in_the_engine_process_fails_only_its_batch(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """--engine-process on: the engine runs the model, so the switch arms it (through the
    supervisor's environment). One fault under load from two clients fails one call, INTERNAL
    with the engine's message; the other calls are answered and both front ends go on serving."""
    server, control = faulty_server(
        start_server, tmp_path, "--processes", "2", "--engine-process", "on", "--engine-max-batch", "1"
    )

    def front_ends_serving() -> int:
        return sum(r.get("event") == "serving" and r.get("role") == "frontend" for r in server.log_records())

    wait_for(lambda: front_ends_serving() == 2, 60, "both front ends to log serving")
    data = image_bytes("zidane.jpg")
    stop = threading.Event()
    answers: list[tuple[grpc.StatusCode, str, int]] = []

    def calls() -> None:  # a channel each: SO_REUSEPORT may hand them to different front ends
        with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.FaceDetectorStub(channel)
            while not stop.is_set():
                answers.append(detect(stub, data))

    threads = [threading.Thread(target=calls) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: len(answers) >= 4, 30, "load to be flowing")
    arm_faults(control, "1 cuda")
    wait_for(lambda: not control.exists(), 10, "the engine to take the control file")
    time.sleep(1.0)  # more calls after the fault
    stop.set()
    for t in threads:
        t.join(60)

    failures = [a for a in answers if a[0] != grpc.StatusCode.OK]
    assert len(failures) == 1 and failures[0][0] == grpc.StatusCode.INTERNAL, failures
    assert "engine process" in failures[0][1] and "CUDA error" in failures[0][1], failures
    assert all(a[2] == ZIDANE_FACES for a in answers if a[0] == grpc.StatusCode.OK)
    for _ in range(4):  # fresh connections, wherever the kernel sends them: all answered
        with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            assert detect(pb_grpc.FaceDetectorStub(channel), data) == (grpc.StatusCode.OK, "", ZIDANE_FACES)
    events = [r.get("event") for r in server.log_records()]
    assert events.count("fault_injected") == 1 and "engine_batch_failed" in events, events
    assert front_ends_serving() == 2, "a front end was restarted"
    assert server.stop() == 0, server.log_text()
