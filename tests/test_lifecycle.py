"""Server lifecycle: health NOT_SERVING -> SERVING while the model loads, SIGTERM draining, the
settings (flags and FACEDET_* environment twins), GetModelInfo, and the structured logs."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_server import __version__
from facedet_server.app.config import ON_CPU, ON_GPU, SETTINGS, usable_cpus
from facedet_server.model.files import dynamic_path
from facedet_test_support import (
    CHANNEL_OPTIONS,
    EXPECTED_FACES,
    MODEL,
    Server,
    ServerFactory,
    arm_faults,
    faulty_server,
    free_port,
    image_bytes,
    run_cli,
    wait_for,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Reconnect fast, so a channel opened before the port is up notices it within milliseconds
# (the default backoff is 1 s and growing).
FAST_RECONNECT = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 50),
]


def status_name(status: int) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))


# --- health while loading --------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_health_goes_not_serving_then_serving(start_server: ServerFactory, tmp_path: Path) -> None:
    """Watch health from the moment the process starts: the port opens before the model loads,
    so the first status is NOT_SERVING, then SERVING. Calls made meanwhile get UNAVAILABLE.
    The model is given by registry name, found in an offline mirror (FACEDET_MODEL_DIR)."""
    server = start_server(
        start=False,
        unix=False,
        model="yolov5n-0.5",
        env={"FACEDET_MODEL_DIR": str(MODEL.parent), "FACEDET_HOME": str(tmp_path / "home")},
    )
    with grpc.insecure_channel(server.target, options=FAST_RECONNECT) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.FaceDetectorStub(channel)
        server.start(wait=False)
        watch = health.Watch(
            health_pb2.HealthCheckRequest(service="facedet.v1.FaceDetector"), timeout=90, wait_for_ready=True
        )
        statuses: list[int] = []
        early_calls: list[tuple[Any, str]] = []
        try:
            for response in watch:
                statuses.append(response.status)
                if response.status == NOT_SERVING and not early_calls:
                    # While loading, detection must be refused as UNAVAILABLE (or, if the model
                    # finished loading in the meantime, succeed).
                    calls: list[Callable[[], object]] = [
                        lambda: stub.DetectFaces(
                            pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg")), timeout=30
                        ),
                        lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30),
                    ]
                    for call in calls:
                        try:
                            call()
                            early_calls.append((grpc.StatusCode.OK, ""))
                        except grpc.RpcError as exc:
                            error: Any = exc
                            early_calls.append((error.code(), error.details()))
                if response.status == SERVING:
                    break
        finally:
            watch.cancel()
        names = [status_name(s) for s in statuses]
        assert names[0] == "NOT_SERVING", f"health went {names}; the port should open before the model loads"
        assert names[-1] == "SERVING", names
        assert "SERVING" not in names[:-1], names
        for code, details in early_calls:
            assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK), (code, details)
            if code == grpc.StatusCode.UNAVAILABLE:
                assert "loading" in details, details
        # Once SERVING, it serves, and the overall status ("") agrees.
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == SERVING
        response = stub.DetectFaces(pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg")), timeout=30)
        assert len(response.faces) == EXPECTED_FACES["zidane.jpg"]
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.model_sha256 == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    loaded = [r for r in server.log_records() if r.get("event") == "model_loaded"]
    # The registry name is served as the mirror's file made dynamic into the cache.
    made = dynamic_path(MODEL, info.model_sha256, tmp_path / "home")
    assert loaded and loaded[0]["model"] == str(made), loaded


# --- SIGTERM ---------------------------------------------------------------------------------


class StreamRun:
    """A stream that sends `first` frames, waits for `release`, then sends `rest` more."""

    def __init__(
        self, stub: pb_grpc.FaceDetectorStub, photo: str, base_id: int, first: int, rest: int
    ) -> None:
        self.stub, self.photo, self.base_id = stub, photo, base_id
        self.first, self.rest = first, rest
        self.release = threading.Event()
        self.got_first = threading.Event()
        self.responses: list[pb.DetectFacesResponse] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _requests(self) -> Iterator[pb.DetectFacesRequest]:
        data = image_bytes(self.photo)
        for i in range(self.first + self.rest):
            if i == self.first:
                self.release.wait(60)
            yield pb.DetectFacesRequest(encoded=data, frame_id=self.base_id + i)

    def _run(self) -> None:
        try:
            for response in self.stub.StreamDetectFaces(self._requests(), timeout=90):
                self.responses.append(response)
                self.got_first.set()
        except BaseException as exc:
            self.error = exc

    def check(self) -> None:
        assert self.error is None, f"stream failed: {self.error}"
        ids = [r.frame_id for r in self.responses]
        assert ids == [self.base_id + i for i in range(self.first + self.rest)], ids
        for r in self.responses:
            assert not r.HasField("error"), r.error
            assert len(r.faces) == EXPECTED_FACES[self.photo]


@pytest.mark.timeout(120)
def test_sigterm_drains_in_flight_calls(start_server: ServerFactory, tmp_path: Path) -> None:
    # One image at a time on one worker, each model run 100 ms longer (the test-only fault
    # switch), so that calls are still in flight when SIGTERM comes on any machine.
    server, control = faulty_server(start_server, tmp_path, "--grace-seconds", "30")
    big = image_bytes("test.jpg")
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FaceDetectorStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        expected_big = len(stub.DetectFaces(pb.DetectFacesRequest(encoded=big), timeout=30).faces)
        assert expected_big > 0
        arm_faults(control, "1000 slow 100")

        statuses: list[int] = []
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=90)

        def follow() -> None:
            try:
                for response in watch:
                    statuses.append(response.status)
            except grpc.RpcError:
                pass  # cancelled below

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        wait_for(lambda: statuses == [SERVING], 10, "health watch to report SERVING")

        streams = [
            StreamRun(stub, "zidane.jpg", 1000, first=8, rest=12),
            StreamRun(stub, "sample.jpg", 2000, first=8, rest=12),
        ]
        for s in streams:
            s.thread.start()
        for s in streams:
            assert s.got_first.wait(30), "stream got no response before SIGTERM"
        unary = [
            stub.DetectFaces.future(pb.DetectFacesRequest(encoded=big, frame_id=i), timeout=90)
            for i in range(16)
        ]
        time.sleep(0.3)  # let the unary calls reach the server
        in_flight = sum(not f.done() for f in unary)
        server.signal()
        wait_for(lambda: NOT_SERVING in statuses, 10, "health to report NOT_SERVING after SIGTERM")
        watch.cancel()  # a watch is an in-flight call too; drop it so the drain need not wait for it
        time.sleep(0.2)

        # New calls are refused now, on a new connection and on the existing one...
        with grpc.insecure_channel(server.target) as fresh:
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.FaceDetectorStub(fresh).DetectFaces(
                    pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg")), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)

        # ...while the streams already open keep going: the rest of their frames are sent now.
        for s in streams:
            s.release.set()
        for s in streams:
            s.thread.join(60)
            assert not s.thread.is_alive(), "stream did not finish"
        for s in streams:
            s.check()
        for i, future in enumerate(unary):
            response = future.result()
            assert response.frame_id == i
            assert len(response.faces) == expected_big
        assert in_flight > 0, "every unary call finished before SIGTERM; the test proved nothing"
        watcher.join(10)

    assert server.wait_exit(30) == 0, server.log_text()
    events = [r.get("event") for r in server.log_records()]
    assert "draining" in events and events[-1] == "stopped", events


@pytest.mark.timeout(60)
def test_sigterm_grace_period_cuts_a_stream_that_never_ends(start_server: ServerFactory) -> None:
    server = start_server("--grace-seconds", "1", unix=False)
    hold = threading.Event()
    result: dict[str, Any] = {}

    def requests() -> Iterator[pb.DetectFacesRequest]:
        yield pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg"), frame_id=1)
        hold.wait(60)  # never half-closes on its own

    with server.stub() as stub:
        call = stub.StreamDetectFaces(requests(), timeout=60)
        first = next(call)
        assert first.frame_id == 1
        started = time.monotonic()
        server.signal()
        code = server.wait_exit(20)
        elapsed = time.monotonic() - started
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            result["code"] = exc.code()
        hold.set()
    assert code == 0, server.log_text()
    assert elapsed < 10, f"server took {elapsed:.1f}s to stop with --grace-seconds 1"
    assert result.get("code") in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), result


# --- settings --------------------------------------------------------------------------------


def test_serve_help_documents_every_setting() -> None:
    result = run_cli("serve", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    text = re.sub(r"\s+", " ", result.stdout)
    assert len(SETTINGS) >= 20
    for setting in SETTINGS:
        assert setting.flag in text, f"{setting.flag} missing from serve --help"
        assert f"env {setting.env}" in text, f"{setting.env} missing from serve --help"
    for flag in ("--listen", "--max-message-bytes", "--max-queue", "--grace-seconds", "--log-format"):
        assert flag in text
    assert "FACEDET_MAX_BATCH" in text and "FACEDET_LISTEN" in text


def test_invalid_setting_is_refused() -> None:
    result = run_cli("serve", "--max-batch", "-1", "--listen", f"127.0.0.1:{free_port()}", timeout=60)
    assert result.returncode == 2
    assert "max_batch must be >= 0" in result.stderr


def test_missing_model_file_exits_with_message(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    result = run_cli("serve", "--model", str(missing), "--listen", f"127.0.0.1:{free_port()}", timeout=60)
    assert result.returncode == 1, result.stderr
    assert str(missing) in result.stderr and "does not exist" in result.stderr


@pytest.fixture(scope="module")
def env_server(module_server_factory: ServerFactory) -> Server:
    """A server configured only through FACEDET_* variables (model and listen addresses too),
    plus one flag that must win over its variable."""
    server = module_server_factory(
        "--max-queue", "19", model=None, listen_flags=False, start=False, name="env"
    )
    server.env.update(
        {
            "FACEDET_MODEL": str(MODEL),
            "FACEDET_LISTEN": ",".join(server.listen_addresses),
            "FACEDET_MAX_BATCH": "3",
            "FACEDET_MAX_DELAY_MS": "7.5",
            "FACEDET_MAX_QUEUE": "17",  # the flag says 19
            "FACEDET_MIN_CONFIDENCE": "0.6",
            "FACEDET_IOU_THRESHOLD": "0.4",
            "FACEDET_MAX_FACES": "50",
            "FACEDET_MAX_PIXELS": "40000000",
            "FACEDET_MAX_MESSAGE_BYTES": str(8 * 1024 * 1024),
            "FACEDET_SUMMARY_INTERVAL": "0",
        }
    )
    return server.start()


def test_environment_settings(env_server: Server) -> None:
    for target in (env_server.target, env_server.unix_target):  # both FACEDET_LISTEN addresses
        with env_server.stub(target) as stub:
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            assert info.max_batch == 3
            assert info.max_delay_ms == pytest.approx(7.5)
            assert info.limits.max_queue == 19, "a flag must win over its environment variable"
            assert info.default_options.min_confidence == pytest.approx(0.6)
            assert info.default_options.iou_threshold == pytest.approx(0.4)
            assert info.default_options.max_faces == 50
            assert info.limits.max_faces == 50
            assert info.limits.max_pixels == 40_000_000
            assert info.limits.max_message_bytes == 8 * 1024 * 1024
    with env_server.stub() as stub:
        data = image_bytes("sample.jpg")
        default = stub.DetectFaces(pb.DetectFacesRequest(encoded=data), timeout=30)
        explicit = stub.DetectFaces(
            pb.DetectFacesRequest(encoded=data, options=pb.DetectionOptions(min_confidence=0.6)), timeout=30
        )
        lower = stub.DetectFaces(
            pb.DetectFacesRequest(encoded=data, options=pb.DetectionOptions(min_confidence=0.5)), timeout=30
        )
        assert all(f.confidence >= 0.6 for f in default.faces)
        assert [f.confidence for f in default.faces] == [f.confidence for f in explicit.faces]
        assert len(lower.faces) == EXPECTED_FACES["sample.jpg"] >= len(default.faces)
        with pytest.raises(grpc.RpcError) as over:
            stub.DetectFaces(
                pb.DetectFacesRequest(encoded=data, options=pb.DetectionOptions(max_faces=51)), timeout=30
            )
        assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_model_info(server: Server) -> None:
    with server.stub() as stub:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.name == "yolov5n-0.5"
    assert (info.input_width, info.input_height) == (640, 640)
    assert info.backend in ("onnxruntime", "torch", "tensorrt")
    if info.backend == "onnxruntime":
        assert info.execution_provider.endswith("ExecutionProvider"), info.execution_provider
    else:
        assert info.execution_provider
    assert info.version == __version__
    assert info.model_sha256 == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    d = info.default_options
    assert (d.min_confidence, d.iou_threshold, d.max_faces, d.min_face_size) == (0.5, 0.5, 1000, 0.0)
    limits = info.limits
    assert limits.max_message_bytes == 16 * 1024 * 1024
    assert limits.max_pixels == 50_000_000
    assert limits.max_faces == 1000
    max_batch, _, max_queue = automatic_batching(info.backend, info.execution_provider)
    assert (info.max_batch, limits.max_queue) == (max_batch, max_queue)
    assert info.max_delay_ms == pytest.approx(2.0)


def automatic_batching(backend: str, device: str) -> tuple[int, int, int]:
    """(max_batch, batch_workers, max_queue) a server with no batching settings runs with."""
    on_gpu = backend == "tensorrt" or (backend == "torch" and device.startswith("cuda"))
    automatic = ON_GPU if on_gpu else ON_CPU
    return automatic.max_batch, automatic.batch_workers, automatic.max_queue


def loaded_batching(server: Server) -> tuple[int, int, int]:
    (loaded,) = [r for r in server.log_records() if r.get("event") == "model_loaded"]
    return loaded["max_batch"], loaded["batch_workers"], loaded["max_queue"]


def test_batching_settings_left_automatic_follow_where_the_model_runs(server: Server) -> None:
    """The session server sets none of them: ONNX Runtime (the CPU) runs the CPU values, and the
    model_loaded log line says so along with GetModelInfo."""
    with server.stub() as stub:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    expected = automatic_batching(info.backend, info.execution_provider)
    if info.backend == "onnxruntime":
        assert expected == (8, usable_cpus(), 256)  # a batch in flight per CPU
    assert loaded_batching(server) == expected
    assert (info.max_batch, info.limits.max_queue) == (expected[0], expected[2])


def test_an_explicit_max_batch_wins_over_the_automatic_one(start_server: ServerFactory) -> None:
    server = start_server("--max-batch", "16", unix=False)
    with server.stub() as stub:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        response = stub.DetectFaces(pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg")), timeout=30)
    assert len(response.faces) == EXPECTED_FACES["zidane.jpg"]
    _, workers, max_queue = automatic_batching(info.backend, info.execution_provider)
    assert info.max_batch == 16 and info.limits.max_queue == max_queue
    assert loaded_batching(server) == (16, workers, max_queue)  # the others stay automatic


# --- logs ------------------------------------------------------------------------------------


def test_logs_are_json_lines(server: Server) -> None:
    records = server.log_records()  # fails on any line that is not JSON
    assert records, "the server wrote no log"
    for record in records:
        assert {"event", "level", "timestamp"} <= set(record), record
    events = [r["event"] for r in records]
    assert events[:1] == ["listening"] and "model_loaded" in events and "serving" in events, events


def new_lines(server: Server, before: int) -> list[dict[str, Any]]:
    return server.log_records()[before:]


def test_failed_request_logs_one_warning_and_success_logs_nothing(env_server: Server) -> None:
    data = image_bytes("zidane.jpg")
    with env_server.stub() as stub:
        stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        before = len(env_server.log_records())
        for i in range(5):
            stub.DetectFaces(pb.DetectFacesRequest(encoded=data, frame_id=i), timeout=30)
        list(stub.StreamDetectFaces(iter([pb.DetectFacesRequest(encoded=data)] * 3), timeout=30))
        time.sleep(0.3)
        assert new_lines(env_server, before) == [], "successful requests must not log at info level"

        before = len(env_server.log_records())
        with pytest.raises(grpc.RpcError):
            stub.DetectFaces(pb.DetectFacesRequest(encoded=b"\x00junk"), timeout=30)
        time.sleep(0.3)
        lines = new_lines(env_server, before)
        assert len(lines) == 1, lines
        (line,) = lines
        assert line["level"] == "warning"
        assert line["code"] == "INVALID_ARGUMENT"
        assert line["rpc"] == "DetectFaces"
        assert "JPEG or PNG" in line["error"]

        before = len(env_server.log_records())
        bad_stream = [
            pb.DetectFacesRequest(encoded=data, frame_id=1),
            pb.DetectFacesRequest(encoded=b"", frame_id=2),
            pb.DetectFacesRequest(encoded=data, frame_id=3),
        ]
        responses = list(stub.StreamDetectFaces(iter(bad_stream), timeout=30))
        assert [r.HasField("error") for r in responses] == [False, True, False]
        time.sleep(0.3)
        lines = new_lines(env_server, before)
        assert len(lines) == 1, lines
        assert lines[0]["level"] == "warning" and lines[0]["code"] == "INVALID_ARGUMENT"
        assert lines[0]["frame_id"] == 2


@pytest.mark.timeout(60)
def test_sigterm_while_loading_never_reports_serving(start_server: ServerFactory) -> None:
    """SIGTERM before the model is ready: the server stops without ever reporting SERVING (a load
    balancer must not be told to send traffic to a process that is shutting down). The server's
    "serving" log event marks the moment it set SERVING; the watch may miss so short a flip."""
    # A short grace: the open Watch below is an in-flight call the drain would wait for.
    server = start_server("--grace-seconds", "2", start=False, unix=False)
    with grpc.insecure_channel(server.target, options=FAST_RECONNECT) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        server.start(wait=False)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60, wait_for_ready=True)
        statuses: list[int] = []
        try:
            for response in watch:
                statuses.append(response.status)
                if len(statuses) == 1:
                    assert response.status == NOT_SERVING, "the model loaded too fast for this test"
                    server.signal()
        except grpc.RpcError:
            pass  # the server went away
        code = server.wait_exit(30)
    names = [status_name(s) for s in statuses]
    assert "SERVING" not in names, f"health went {names} after SIGTERM during loading"
    assert code == 0, server.log_text()
    events = [r.get("event") for r in server.log_records()]
    assert "serving" not in events, events


@pytest.mark.parametrize("problem", ["unix-socket-in-missing-folder", "port-taken"])
def test_unusable_listen_address_is_a_clean_error(problem: str, tmp_path: Path) -> None:
    """A listen address that cannot be bound stops the server with a message naming it, not a
    Python traceback."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if problem == "port-taken":
            address = f"127.0.0.1:{taken.getsockname()[1]}"
        else:
            address = f"unix://{tmp_path}/missing/facedet.sock"
        result = run_cli("serve", "--model", str(MODEL), "--listen", address, timeout=60)
    assert result.returncode != 0
    assert address in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.timeout(60)
def test_open_health_watch_does_not_hold_up_shutdown(start_server: ServerFactory) -> None:
    """Clients with gRPC client-side health checking keep a Health/Watch stream open for the life
    of the channel. With no detection call in flight, SIGTERM must not wait the whole grace
    period for those watches: they get NOT_SERVING and the server exits promptly."""
    server = start_server("--grace-seconds", "10", unix=False)
    with grpc.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        statuses: list[int] = []
        ended: list[Any] = []

        def follow() -> None:
            try:
                for response in watch:
                    statuses.append(response.status)
            except grpc.RpcError as exc:
                ended.append(exc.code())  # type: ignore[attr-defined]

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        wait_for(lambda: statuses == [SERVING], 10, "health watch to report SERVING")
        started = time.monotonic()
        server.signal()
        code = server.wait_exit(30)
        elapsed = time.monotonic() - started
        watcher.join(10)
    assert code == 0
    assert NOT_SERVING in statuses, [status_name(s) for s in statuses]
    assert elapsed < 5, f"an idle server with one open health watch took {elapsed:.1f}s to stop (grace 10 s)"
