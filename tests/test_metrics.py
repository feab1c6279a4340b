"""Prometheus metrics (--metrics-listen) of a real server: what a scrape says matches what was
sent, by method and status; with --processes one scrape (the supervisor's) covers every process."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from facedet.v1 import face_detector_pb2 as pb
from facedet_test_support import Server, ServerFactory, free_port, image_bytes, wait_for
from prometheus_client.parser import text_string_to_metric_families

GOOD, BAD, FRAMES = 5, 3, 4


def scrape(address: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] of everything /metrics serves."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    return sum(v for have, v in samples.get(name, []) if labels.items() <= have.items())


def send_traffic(server: Server) -> None:
    """A new connection per call: with --processes the kernel spreads them over the front ends."""
    data = image_bytes("zidane.jpg")
    for _ in range(GOOD):
        with server.stub() as stub:
            assert len(stub.DetectFaces(pb.DetectFacesRequest(encoded=data)).faces) == 2
    for _ in range(BAD):
        with server.stub() as stub, pytest.raises(grpc.RpcError) as failed:
            stub.DetectFaces(pb.DetectFacesRequest(encoded=b"not an image"))
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with server.stub() as stub:
        frames = [pb.DetectFacesRequest(encoded=data, frame_id=i) for i in range(FRAMES)]
        responses = list(stub.StreamDetectFaces(iter(frames)))
        assert [len(r.faces) for r in responses] == [2] * FRAMES


def check_scrape(address: str) -> None:
    # A stream frame is counted as its response is made, a moment before the call ends.
    wait_for(
        lambda: value(scrape(address), "facedet_requests_total", method="StreamDetectFaces") == FRAMES,
        10,
        "the stream's frames in the metrics",
    )
    samples = scrape(address)
    assert value(samples, "facedet_requests_total", method="DetectFaces", code="OK") == GOOD
    assert value(samples, "facedet_requests_total", method="DetectFaces", code="INVALID_ARGUMENT") == BAD
    assert value(samples, "facedet_requests_total", method="StreamDetectFaces", code="OK") == FRAMES
    assert value(samples, "facedet_requests_total", code="OK") == GOOD + FRAMES
    assert value(samples, "facedet_requests_total", code="INVALID_ARGUMENT") == BAD
    assert value(samples, "facedet_request_duration_seconds_count", method="DetectFaces") == GOOD + BAD
    for stage in ("decode", "queue", "inference", "postprocess"):
        # Stage times come from answered images only.
        assert value(samples, "facedet_stage_duration_seconds_count", stage=stage) == GOOD + FRAMES
    assert value(samples, "facedet_batch_size_sum") == GOOD + FRAMES  # every good image ran once
    assert value(samples, "facedet_batch_size_count") >= 1
    (labels, info), *_ = samples["facedet_model_info"]
    assert info == 1
    assert labels["runtime"] == "onnxruntime"
    assert labels["input_size"] == "640x640"
    assert labels["name"] and labels["version"]
    assert value(samples, "facedet_queue_depth") == 0
    assert "facedet_queue_depth" in samples
    assert value(samples, "facedet_requests_in_flight") == 0
    assert value(samples, "facedet_active_streams") == 0
    assert value(samples, "facedet_frames_dropped_total") == 0
    assert "facedet_gpu_memory_allocated_bytes" not in samples  # no torch CUDA here


def test_metrics_count_what_was_sent(start_server: ServerFactory) -> None:
    address = f"127.0.0.1:{free_port()}"
    server = start_server("--metrics-listen", address, unix=False)
    send_traffic(server)
    check_scrape(address)


def test_one_scrape_covers_every_process(start_server: ServerFactory) -> None:
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        "--processes", "2", "--decode-threads", "1", "--intra-op-threads", "1",
        "--metrics-listen", address, unix=False,
    )  # fmt: skip
    send_traffic(server)
    check_scrape(address)


def test_metrics_are_off_by_default(start_server: ServerFactory) -> None:
    server = start_server(unix=False)
    records = server.log_records()
    assert not any(r.get("event") == "metrics_listening" for r in records)
