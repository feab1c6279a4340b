"""In-process throughput of one or more model files at several batch sizes, in one run:
`python -m facedet_bench.backends --model A.onnx --model B.onnx --image I --batches 1,4,16`.

Each measured call is `HostPipeline.infer_batch` on already letterboxed copies of the image (tensor
build, model, head decoding, NMS, mapping back): the part of the pipeline that depends on the
model file. A model with a fixed batch of 1 (the frozen upstream export) runs a batch as that
many single calls; ours runs it as one call, at the rectangular size the server would use.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from facedet_server.app.config import ServerConfig
from facedet_server.app.server import limits_for
from facedet_server.faces.options import Options
from facedet_server.image.inputs import EncodedImage
from facedet_server.pipeline.host import HostPipeline
from facedet_server.runtime.onnxruntime import OnnxRuntimeBackend


def measure(model: Path, image: bytes, batch: int, seconds: float, threads: int) -> tuple[float, float, str]:
    """(img/s, median ms per batch, network input) for `batch` copies of `image`."""
    detector = HostPipeline(
        OnnxRuntimeBackend(model, intra_op_threads=threads, max_batch=batch), limits_for(ServerConfig())
    )
    prepared = detector.prepare(EncodedImage(image), Options())
    items = [prepared] * batch
    detector.infer_batch(items)  # warm-up: ONNX Runtime allocates and picks kernels
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        detector.infer_batch(items)
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    h, w = prepared.canvas.shape[:2]
    return batch / median, median * 1000, f"{w}x{h}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, action="append", required=True, help="repeat to compare")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per (model, batch)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = default)")
    args = parser.parse_args(argv)
    image = args.image.read_bytes()
    print("| model | input | batch | img/s | ms per batch (median) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for batch in (int(b) for b in args.batches.split(",")):
        for model in args.model:
            rate, ms, shape = measure(model, image, batch, args.seconds, args.threads)
            print(f"| {model.name} | {shape} | {batch} | {rate:.1f} | {ms:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
