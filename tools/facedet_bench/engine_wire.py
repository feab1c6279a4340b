"""What the engine socket costs per batch: `python -m facedet_bench.engine_wire --image I`.

A front-end thread and an engine thread on the two ends of a socketpair run the protocol's
exchange: `RunBatch` of `--batch` GpuPrepared (the JPEG's bytes, as a front end sends them to a
GPU engine) one way, `BatchDone` of as many detections (`--faces` rows each) back, each side
encoding and decoding with `engine.codec` and `engine.wire`. No model runs, so the figures are
the transport alone: the median of `--iters` round trips, and each direction on its own as a
stream (the sender never waits for the receiver), in microseconds per message.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
from facedet_server.engine import codec
from facedet_server.engine.protocol import BatchDone, RunBatch
from facedet_server.engine.wire import recv_message, send_message
from facedet_server.errors import DetectError
from facedet_server.faces.options import Options
from facedet_server.pipeline.base import Detection, Timing
from facedet_server.pipeline.gpu_prepare import GpuPrepared

Send = Callable[[socket.socket, Sequence[Any]], None]
Receive = Callable[[socket.socket], list[Any]]


@dataclass(frozen=True)
class WirePath:
    """One way of moving batch items and results over a socket (send, then receive + decode)."""

    send_items: Send
    receive_items: Receive
    send_results: Send
    receive_results: Receive


def _send_items(sock: socket.socket, items: Sequence[Any]) -> None:
    send_message(sock, *codec.run_batch(items))


def _receive_items(sock: socket.socket) -> list[Any]:
    message, buffers = recv_message(sock)
    assert isinstance(message, RunBatch)
    return list(codec.batch_items(message, buffers))


def _send_results(sock: socket.socket, results: Sequence[Any]) -> None:
    send_message(sock, *codec.batch_done(results))


def _receive_results(sock: socket.socket) -> list[Any]:
    message, buffers = recv_message(sock)
    assert isinstance(message, BatchDone)
    return list(codec.batch_results(message, buffers))


TYPED = WirePath(_send_items, _receive_items, _send_results, _receive_results)


def make_batch(
    jpeg: bytes, batch: int, faces: int
) -> tuple[list[GpuPrepared], list[Detection | DetectError]]:
    height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg)
    rng = np.random.default_rng(0)
    items = [GpuPrepared(Options(), width, height, jpeg=jpeg) for _ in range(batch)]
    results: list[Detection | DetectError] = [
        Detection(rng.random((faces, 15), dtype=np.float32), width, height, Timing(inference_us=1000))
        for _ in range(batch)
    ]
    return items, results


def round_trips(path: WirePath, items: Sequence[Any], results: Sequence[Any], iters: int) -> list[float]:
    """Seconds per RunBatch -> BatchDone exchange, one batch in flight, as a front end runs it."""
    front, engine = socket.socketpair()
    with front, engine:

        def serve() -> None:
            for _ in range(iters):
                received = path.receive_items(engine)
                assert len(received) == len(items)
                path.send_results(engine, results)

        server = threading.Thread(target=serve, name="engine", daemon=True)
        server.start()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            path.send_items(front, items)
            got = path.receive_results(front)
            times.append(time.perf_counter() - start)
            assert len(got) == len(results)
        server.join()
    return times


def stream(send: Send, receive: Receive, payload: Sequence[Any], iters: int) -> float:
    """Seconds per message, the sender writing the next one while the receiver decodes."""
    writer, reader = socket.socketpair()
    with writer, reader:

        def send_all() -> None:
            for _ in range(iters):
                send(writer, payload)

        sender = threading.Thread(target=send_all, daemon=True)
        start = time.perf_counter()
        sender.start()
        for _ in range(iters):
            receive(reader)
        elapsed = time.perf_counter() - start
        sender.join()
    return elapsed / iters


def measure(path: WirePath, jpeg: bytes, batch: int, faces: int, iters: int) -> dict[str, Any]:
    items, results = make_batch(jpeg, batch, faces)
    round_trips(path, items, results, max(iters // 10, 3))  # warm-up
    times = round_trips(path, items, results, iters)
    return {
        "batch": batch,
        "jpeg_bytes": len(jpeg),
        "faces_per_image": faces,
        "iters": iters,
        "round_trip_us_median": _us(statistics.median(times)),
        "round_trip_us_p90": _us(statistics.quantiles(times, n=10)[-1]),
        "run_batch_stream_us": _us(stream(path.send_items, path.receive_items, items, iters)),
        "batch_done_stream_us": _us(stream(path.send_results, path.receive_results, results, iters)),
    }


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


def main(argv: Sequence[str] | None = None, path: WirePath = TYPED) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m facedet_bench.engine_wire", description=__doc__)
    parser.add_argument("--image", type=Path, required=True, help="a JPEG (e.g. zidane.jpg, 1280x720)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--faces", type=int, default=2, help="rows of each detection's (M, 15) faces")
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args(argv)
    report = measure(path, args.image.read_bytes(), args.batch, args.faces, args.iters)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
