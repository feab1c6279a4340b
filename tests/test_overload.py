"""Overload: a real server offered several times what it can do, with deadlines, answers what it
admits, refuses the rest at once with RESOURCE_EXHAUSTED and a retry hint, never lets a call end
CANCELLED for its own deadline, keeps its health check answering, and stays bounded in memory.

The run is a short version of `python -m facedet_bench.overload` (docs/reliability.md), with
bounds loose enough for two busy cores: they catch a collapse, not a few percent.
"""

from __future__ import annotations

import time

import grpc
from facedet.v1 import face_detector_pb2 as pb
from facedet_bench import overload
from facedet_test_support import IMAGES, ServerFactory, detect_request, image_bytes


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
    assert report.refused_p99_ms < 1000, summary
    # Not collapsing: the server still does useful work at a fair share of its capacity.
    assert report.goodput_of_capacity > 0.3, summary
    assert report.health_failures == 0, summary
    assert report.health_p99_ms < 1000, summary
    assert report.server_peak_rss_mib is not None and report.server_peak_rss_mib < 1200, summary


def test_a_deadline_the_queue_cannot_meet_is_refused_with_a_retry_hint(start_server: ServerFactory) -> None:
    """With calls queued, one whose deadline is shorter than one batch takes is refused before
    any work, and its trailing metadata says when to retry."""
    server = start_server(unix=False)
    data = image_bytes("zidane.jpg")
    with grpc.insecure_channel(server.target) as channel:
        detect = channel.unary_unary(
            "/facedet.v1.FaceDetector/DetectFaces",
            request_serializer=pb.DetectFacesRequest.SerializeToString,
            response_deserializer=pb.DetectFacesResponse.FromString,
        )
        for _ in range(3):  # the server learns how long a batch takes
            detect(detect_request(data), timeout=30)
        backlog = [detect.future(detect_request(data), timeout=60) for _ in range(100)]
        time.sleep(0.2)
        try:
            started = time.perf_counter()
            detect(detect_request(data), timeout=0.3)
            raise AssertionError("a call behind a backlog of 100 fit in a 0.3 s deadline")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert "expected wait" in (exc.details() or ""), exc.details()
            trailing = {m.key: str(m.value) for m in exc.trailing_metadata() or ()}
            assert int(trailing["retry-after-ms"]) > 0, trailing
            assert trailing["grpc-retry-pushback-ms"] == trailing["retry-after-ms"], trailing
            assert time.perf_counter() - started < 0.3
        for future in backlog:
            assert len(future.result().faces) == 2
