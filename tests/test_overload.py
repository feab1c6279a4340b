"""Overload: a real server offered several times what it can do, with deadlines, answers what it
admits, refuses the rest at once with RESOURCE_EXHAUSTED and a retry hint, never lets a call end
CANCELLED for its own deadline, keeps its health check answering, and stays bounded in memory.

The run is a short version of `python -m facedet_bench.overload` (docs/reliability.md), with
bounds loose enough for two busy cores: they catch a collapse, not a few percent.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from facedet.v1 import face_detector_pb2 as pb
from facedet_bench import overload
from facedet_test_support import IMAGES, ServerFactory, detect_request, free_port, image_bytes, wait_for
from test_metrics import scrape, value


def test_burst_is_answered_or_refused_at_once(start_server: ServerFactory) -> None:
    server = start_server(unix=False)
    assert server.proc is not None
    args = overload.parser().parse_args(
        [
            "--target", server.target,
            "--pid", str(server.proc.pid),
            "--image", str(IMAGES / "zidane.jpg"),
            "--capacity-seconds", "3",
            "--factor", "5",
            "--burst-seconds", "4",
            "--deadline", "2",
        ]
    )  # fmt: skip
    report = overload.run(args)
    summary = "\n".join(report.lines())
    # Only the statuses overload may produce; above all no CANCELLED for a call's own deadline.
    assert report.unexpected == {}, summary
    assert report.statuses.get("OK", 0) > 0, summary
    # 5x capacity for 4 s is 20 s of work against a 2 s deadline: most must be refused, at once.
    refused = report.statuses.get("RESOURCE_EXHAUSTED", 0)
    assert refused > report.calls / 3, summary
    assert report.retry_hints == refused, summary
    assert report.refused_p99_ms < 2000, summary
    # Not collapsing: the server still does useful work at a fair share of its capacity.
    assert report.goodput_of_capacity > 0.3, summary
    assert report.health_failures == 0, summary
    assert report.health_p99_ms < 1000, summary
    assert report.server_peak_rss_mib is not None and report.server_peak_rss_mib < 1200, summary
    # The heavy threads run at --worker-nice (5 by default), the event loop's at the server's own.
    nice = thread_niceness(server.proc.pid)
    assert nice[server.proc.pid] == 0, nice
    assert sum(1 for n in nice.values() if n == 5) >= 2, nice


def test_a_deadline_the_queue_cannot_meet_is_refused_with_a_retry_hint(start_server: ServerFactory) -> None:
    """With a backlog queued, a call whose deadline the backlog cannot meet is refused before any
    work, well within its deadline, and its trailing metadata says when to retry."""
    address = f"127.0.0.1:{free_port()}"
    server = start_server("--metrics-listen", address, unix=False)
    data = image_bytes("zidane.jpg")
    with grpc.insecure_channel(server.target) as channel:
        detect = channel.unary_unary(
            "/facedet.v1.FaceDetector/DetectFaces",
            request_serializer=pb.DetectFacesRequest.SerializeToString,
            response_deserializer=pb.DetectFacesResponse.FromString,
        )
        for _ in range(3):  # the server learns how long a batch takes
            detect(detect_request(data), timeout=30)
        backlog = [detect.future(detect_request(data), timeout=120) for _ in range(200)]
        # 90 admitted and not yet answered (queued, or decoding: admission counts both; one
        # connection carries at most 100 calls at once): 45 images per batch worker, well over
        # the refused call's 0.5 s on any CPU. The queue alone may stay short on a fast machine,
        # where decoding is the step that waits.
        wait_for(lambda: value(scrape(address), "facedet_requests_in_flight") >= 90, 60, "a backlog of 90")
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as refused:
            detect(detect_request(data), timeout=0.5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        assert "expected wait" in (refused.value.details() or ""), refused.value.details()
        assert time.perf_counter() - started < 0.5
        trailing = {m.key: str(m.value) for m in refused.value.trailing_metadata() or ()}
        assert int(trailing["retry-after-ms"]) > 0, trailing
        assert trailing["grpc-retry-pushback-ms"] == trailing["retry-after-ms"], trailing
        for future in backlog:
            assert len(future.result().faces) == 2


def thread_niceness(pid: int) -> dict[int, int]:
    """Thread id -> niceness of each thread of `pid` (field 19 of /proc/PID/task/TID/stat)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        found[int(task.name)] = int(fields[16])
    return found
