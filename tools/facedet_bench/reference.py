"""The reference the CPU default is held to: a straightforward face-detection pipeline in one
process, as someone would write it with the usual libraries, against `facedet serve` with no
flags through gRPC, measured in one run on the same machine.

Reference: `cv2.imdecode` -> letterbox to 640x640 (cv2.resize + gray padding) -> the frozen
upstream ONNX on ONNX Runtime, two sessions of one intra-op thread each, each fed by its own
thread (the best that design reaches on 2 cores) -> NumPy head decoding and NMS (the server's
own pure functions, so only the design differs, not the arithmetic).

    python -m facedet_bench.reference --image zidane.jpg --duration 10

prints the reference's throughput and single-image p50, the server's throughput at
concurrency 16 and single-client p50, and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from facedet_server.faces.heads import decode_heads
from facedet_server.faces.options import Options
from facedet_server.faces.select import select_faces
from facedet_server.model.files import DEFAULT_MODEL, pull
from facedet_server.model.spec import UPSTREAM_YOLOV5N_05
from facedet_server.tensor.letterbox import Letterbox

from facedet_bench.load import Load, Report, grpc_run, machine, spawned

SIZE = 640


@dataclass(frozen=True)
class Measured:
    img_per_s: float
    p50_ms: float
    faces: int


def reference_session(model: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def reference_detect(session: Any, data: bytes) -> np.ndarray:
    """One image through the reference pipeline: (M, 15) faces in the image's pixels."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("OpenCV cannot decode the image")
    h, w = bgr.shape[:2]
    ratio = min(SIZE / w, SIZE / h)
    new_w, new_h = round(w * ratio), round(h * ratio)
    resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR)
    left, top = (SIZE - new_w) // 2, (SIZE - new_h) // 2
    bottom, right = SIZE - new_h - top, SIZE - new_w - left
    canvas = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    tensor = (canvas[:, :, ::-1].transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32)
    spec = UPSTREAM_YOLOV5N_05
    outputs = session.run(list(spec.output_names), {spec.input_name: tensor})
    (candidates,) = decode_heads(outputs, spec)
    transform = Letterbox(w / new_w, h / new_h, float(left), float(top))
    return select_faces(candidates, Options(0.5, 0.5, 1000, 0.0), transform, w, h)


def run_reference(model: Path, data: bytes, threads: int, warmup: float, duration: float) -> Measured:
    """`threads` threads, each with its own session, detecting `data` over and over."""
    sessions = [reference_session(model) for _ in range(threads)]
    faces = len(reference_detect(sessions[0], data))
    start = time.perf_counter() + warmup
    end = start + duration
    latencies: list[list[float]] = [[] for _ in sessions]

    def work(session: Any, out: list[float]) -> None:
        while (now := time.perf_counter()) < end:
            reference_detect(session, data)
            if now >= start:
                out.append(time.perf_counter() - now)

    pairs = zip(sessions, latencies, strict=True)
    workers = [threading.Thread(target=work, args=pair) for pair in pairs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    flat = [x for out in latencies for x in out]
    return Measured(len(flat) / duration, float(np.percentile(flat, 50)) * 1000, faces)


def default_server(extra: Sequence[str] = (), timeout: float = 180.0) -> Any:
    """`facedet serve` with no flags but its address (and `extra`, to compare other layouts):
    what a user gets out of the box."""

    def argv(target: str) -> list[str]:
        serve = [sys.executable, "-m", "facedet.cli", "serve", "--listen", target]
        return [*serve, "--summary-interval", "0", *extra]

    return spawned(argv, timeout)


def request_bytes(data: bytes) -> bytes:
    from facedet.v1 import face_detector_pb2 as pb

    return pb.DetectFacesRequest(encoded=data).SerializeToString()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facedet_bench.reference", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--image", type=Path, required=True, help="a JPEG to detect over and over")
    parser.add_argument(
        "--model", type=Path, help="the frozen upstream ONNX (default: the registry's yolov5n-0.5 file)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each measured run")
    parser.add_argument("--concurrency", type=int, default=16, help="gRPC clients for the throughput run")
    parser.add_argument(
        "--reference-threads", type=int, default=2, help="reference sessions, one thread each"
    )
    parser.add_argument(
        "--serve-args", default="", help="flags added to `facedet serve` (to measure other layouts)"
    )
    parser.add_argument(
        "--skip-reference", action="store_true", help="measure only the server (for a series of layouts)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    data = args.image.read_bytes()
    # The pulled upstream file itself: what `facedet serve` would serve (the dynamic rewrite, or
    # our export with decoding in the graph) is not the reference's model.
    model = args.model or pull(DEFAULT_MODEL, cache_mirror=False)
    if args.skip_reference:
        ref = ref_single = Measured(float("nan"), float("nan"), 0)
    else:
        ref = run_reference(model, data, args.reference_threads, args.warmup, args.duration)
        ref_single = run_reference(model, data, 1, args.warmup, args.duration)
    with default_server(shlex.split(args.serve_args)) as (target, pid):
        request = request_bytes(data)
        busy = Report.of(
            "grpc",
            load := Load(args.concurrency, args.warmup, args.duration),
            1,
            asyncio.run(grpc_run(target, request, load, 1, pid)),
        )
        single = Report.of(
            "grpc",
            load1 := Load(1, args.warmup, args.duration),
            1,
            asyncio.run(grpc_run(target, request, load1, 1, pid)),
        )
    result: dict[str, Any] = {
        "machine": machine(),
        "reference": {"img_per_s": ref.img_per_s, "p50_ms_single": ref_single.p50_ms, "faces": ref.faces},
        "server": {
            "img_per_s": busy.img_per_s,
            "concurrency": args.concurrency,
            "p50_ms_single": single.latency_ms["p50"],
            "errors": {**busy.errors, **single.errors},
        },
        "throughput_ratio": busy.img_per_s / ref.img_per_s,
        "p50_ratio": single.latency_ms["p50"] / ref_single.p50_ms,
    }
    print(
        f"reference ({args.reference_threads} sessions x 1 thread, 640x640): {ref.img_per_s:.1f} img/s, "
        f"single-image p50 {ref_single.p50_ms:.2f} ms ({ref.faces} faces)"
    )
    print(
        f"facedet serve ({args.serve_args or 'defaults'}) through gRPC: {busy.img_per_s:.1f} img/s at "
        f"concurrency {args.concurrency}, single-client p50 {single.latency_ms['p50']:.2f} ms"
    )
    print(
        f"ratio: throughput {result['throughput_ratio']:.2f}x the reference, "
        f"p50 {result['p50_ratio']:.2f}x the reference's"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if result["server"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
