"""Stopping under load, and restarting: SIGTERM while clients keep calling (every call ends OK
or UNAVAILABLE, the process exits within --grace-seconds, also when the queued work would take
longer), and SIGKILL followed by a new server on the same port, through which Python clients
configured to wait for a ready server carry on without seeing an error.

test_lifecycle.py covers the rest of SIGTERM: calls and streams in flight finish, new calls get
UNAVAILABLE, an endless stream is cut at the grace period, health goes NOT_SERVING."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from facedet.client import FaceDetectorClient, FaceDetectorError
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_test_support import (
    CHANNEL_OPTIONS,
    EXPECTED_FACES,
    ServerFactory,
    arm_faults,
    faulty_server,
    image_bytes,
    wait_for,
)

# What a client that must ride out a restart adds to `wait_for_ready=True` (docs/reliability.md,
# Faults). wait_for_ready alone queues calls while no server listens, but two windows remain
# (each made this test fail without it): the calls in flight on the server that died fail with
# UNAVAILABLE (the retry policy re-sends them: DetectFaces is idempotent), and the new server
# opens its port before its model is loaded and answers UNAVAILABLE "still loading" until then,
# so gRPC's client-side health checking keeps calls off it until it reports SERVING (round_robin
# because pick_first does no health checks).
RIDE_OUT_RESTARTS = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "facedet.v1.FaceDetector"},
        "methodConfig": [
            {
                "name": [{"service": "facedet.v1.FaceDetector"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
ZIDANE_FACES = EXPECTED_FACES["zidane.jpg"]


class CallingThreads:
    """`count` threads calling DetectFaces back to back, each on its own channel, until stopped;
    every call's status (and when it ended) recorded."""

    def __init__(self, target: str, count: int, photo: str = "zidane.jpg") -> None:
        self.target = target
        self.data = image_bytes(photo)
        self.stop = threading.Event()
        self.results: list[tuple[float, str, str]] = []  # (ended at, status, details)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._call, daemon=True) for _ in range(count)]
        for t in self.threads:
            t.start()

    def _call(self) -> None:
        with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.FaceDetectorStub(channel)
            while not self.stop.is_set():
                try:
                    stub.DetectFaces(pb.DetectFacesRequest(encoded=self.data), timeout=30)
                    result = ("OK", "")
                except grpc.RpcError as exc:
                    result = (exc.code().name, str(exc.details()))  # type: ignore[attr-defined]
                with self.lock:
                    self.results.append((time.monotonic(), *result))
                if result[0] != "OK":
                    time.sleep(0.05)  # a refused client backs off a little

    def finish(self) -> Counter[str]:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return Counter(code for _, code, _ in self.results)


@pytest.mark.timeout(120)
def test_sigterm_under_load_answers_every_call_and_exits_in_time(start_server: ServerFactory) -> None:
    """Six clients calling back to back when SIGTERM comes: calls admitted before it are
    answered, calls after it get UNAVAILABLE, no other status, and the process exits 0 well
    within --grace-seconds (the work in flight is short)."""
    server = start_server("--grace-seconds", "10", unix=False)
    load = CallingThreads(server.target, 6)
    wait_for(lambda: len(load.results) >= 12, 60, "calls to be flowing")
    signalled = time.monotonic()
    server.signal()
    code = server.wait_exit(30)
    exited = time.monotonic() - signalled
    time.sleep(0.3)  # the clients see the port closed
    codes = load.finish()
    assert code == 0, server.log_text()
    assert exited < 10, f"exited {exited:.1f} s after SIGTERM, grace 10 s"
    # A call that reaches the port in the instant gRPC's core shuts the server down is cancelled
    # by the core before any of our code sees it (seen once in ~170 calls, 2026-12-02): after
    # the signal, CANCELLED is tolerated for at most two; before it, every call must be OK.
    late_cancelled = [r for r in load.results if r[1] == "CANCELLED" and r[0] >= signalled]
    assert len(late_cancelled) <= 2, late_cancelled
    others = [r for r in load.results if r[1] not in ("OK", "UNAVAILABLE") and r not in late_cancelled]
    assert not others, (codes, others[:3])
    assert codes["UNAVAILABLE"] > 0, codes
    before = [c for t, c, _ in load.results if t < signalled]
    assert before and set(before) == {"OK"}, Counter(before)
    events = [r.get("event") for r in server.log_records()]
    assert "draining" in events and events[-1] == "stopped", events


@pytest.mark.timeout(120)
def test_sigterm_exits_within_the_grace_period_when_the_queue_would_take_longer(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """Forty large images queued on one image at a time (several seconds of work: each model run
    is 200 ms longer through the test-only fault switch, whatever the machine), then SIGTERM with
    --grace-seconds 1: the process exits about a second later, not when the work is done; the
    calls still waiting end with a status, none hangs."""
    server, control = faulty_server(start_server, tmp_path, "--grace-seconds", "1")
    big = image_bytes("test.jpg")
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FaceDetectorStub(channel)
        stub.DetectFaces(pb.DetectFacesRequest(encoded=big), timeout=30)
        arm_faults(control, "1000 slow 200")
        started = time.monotonic()
        futures = [stub.DetectFaces.future(pb.DetectFacesRequest(encoded=big), timeout=60) for _ in range(40)]
        time.sleep(0.5)
        per_image = 0.5 / max(sum(f.done() for f in futures), 1)  # seconds, at most
        server.signal()
        signalled = time.monotonic()
        code = server.wait_exit(30)
        exited = time.monotonic() - signalled
        outcomes: Counter[str] = Counter()
        for future in futures:
            try:
                future.result(timeout=30)
                outcomes["OK"] += 1
            except grpc.RpcError as exc:
                outcomes[exc.code().name] += 1  # type: ignore[attr-defined]
    assert code == 0, server.log_text()
    assert exited < 4, f"exited {exited:.1f} s after SIGTERM with --grace-seconds 1"
    assert sum(outcomes.values()) == 40
    assert outcomes["OK"] < 40, (
        f"all 40 calls finished within {time.monotonic() - started:.1f} s: proved nothing"
    )
    # Cut at the grace period: gRPC ends a call it cancels with CANCELLED or UNAVAILABLE.
    assert set(outcomes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, outcomes
    assert per_image > 0


@pytest.mark.timeout(180)
def test_sigkill_and_a_restart_on_the_same_port_is_invisible_to_waiting_clients(
    start_server: ServerFactory,
) -> None:
    """Two Python clients (facedet.client) with wait_for_ready and RIDE_OUT_RESTARTS call back to
    back; the server is killed with SIGKILL and a new one started on the same port, which loads
    its model while its port is open. No call fails, and calls are answered by the new server."""
    first = start_server(unix=False, name="first")
    errors: list[str] = []
    answered: list[tuple[float, int]] = []  # (when, faces)
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        options = [("grpc.service_config", RIDE_OUT_RESTARTS)]
        with FaceDetectorClient(
            first.target, timeout=60, connect_timeout=None, wait_for_ready=True, channel_options=options
        ) as c:
            while not stop.is_set():
                try:
                    detection = c.detect(image_bytes("zidane.jpg"))
                except FaceDetectorError as exc:
                    errors.append(f"{exc.code}: {exc}")
                    continue
                with lock:
                    answered.append((time.monotonic(), len(detection.faces)))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: len(answered) >= 6, 60, "calls to be answered")
    assert first.proc is not None
    first.proc.kill()
    assert first.proc.wait(10) == -9
    killed = time.monotonic()
    time.sleep(1.0)  # the clients find nothing on the port for a while
    second = start_server(unix=False, name="second", start=False)
    second.port = first.port
    second.start(wait=False)
    wait_for(lambda: any(t > killed + 1.0 for t, _ in answered[-2:]), 90, "calls answered by the new server")
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(70)
    assert not errors, errors[:5]
    after = [faces for t, faces in answered if t > killed]
    assert len(after) >= 2 and set(after) == {ZIDANE_FACES}, after
    assert all(faces == ZIDANE_FACES for _, faces in answered)
