"""In-process GPU pipeline throughput: `python -m facedet_bench.gpu_pipeline --model M --image I`.

Runs what a server batch runs (JPEG header check, nvJPEG decode, GPU letterbox, model as a CUDA
graph, batched NMS, faces back to the host) from `--workers` threads, each with its own CUDA
stream, so one batch's host work overlaps another's GPU work. No gRPC, no asyncio batcher: the
ceiling the server can approach.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from facedet_server.app.config import ServerConfig
from facedet_server.app.server import limits_for
from facedet_server.faces.options import Options
from facedet_server.image.inputs import EncodedImage
from facedet_server.image.nvjpeg import CHOICES
from facedet_server.pipeline.gpu import GpuPipeline
from facedet_server.runtime.torch_cuda import TorchCudaBackend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--batches", default="8,32,64,128", help="batch sizes to try")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--gpu-decode", choices=CHOICES, default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    backend = TorchCudaBackend(args.model, max_batch=max(batches))
    detector = GpuPipeline(backend, limits_for(ServerConfig()), gpu_decode=args.gpu_decode)
    image = EncodedImage(args.image.read_bytes())
    # Every worker thread captures its own CUDA graphs before anything is timed.
    warmers = [threading.Thread(target=detector.warm_up) for _ in range(args.workers)]
    for t in warmers:
        t.start()
    for t in warmers:
        t.join()
    expected = len(detector.detect(image).faces)
    rows = []
    done = [0]
    lock = threading.Lock()
    for batch in batches:
        latencies: list[float] = []

        def work(stop_at: float, batch: int = batch, latencies: list[float] = latencies) -> None:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                items = [detector.prepare(image, Options()) for _ in range(batch)]
                results = detector.infer_batch(items)
                elapsed = time.perf_counter() - start
                assert all(not isinstance(r, Exception) and len(r.faces) == expected for r in results)
                with lock:
                    latencies.append(elapsed)
                    done[0] += batch

        warm_until = time.perf_counter() + 1.0
        threads = [threading.Thread(target=work, args=(warm_until,)) for _ in range(args.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        latencies.clear()
        done[0] = 0
        start = time.perf_counter()
        threads = [threading.Thread(target=work, args=(start + args.duration,)) for _ in range(args.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        ms = np.asarray(latencies) * 1000
        row = {
            "batch": batch,
            "workers": args.workers,
            "gpu_decode": args.gpu_decode,
            "img_per_s": round(done[0] / elapsed, 1),
            "batch_p50_ms": round(float(np.percentile(ms, 50)), 2),
            "batch_p99_ms": round(float(np.percentile(ms, 99)), 2),
        }
        rows.append(row)
        print(
            f"batch {batch:<4} workers {args.workers} nvjpeg {args.gpu_decode:<4} "
            f"{row['img_per_s']:>9.1f} img/s"
            f"  batch latency p50 {row['batch_p50_ms']} ms p99 {row['batch_p99_ms']} ms",
            flush=True,
        )
    device = torch.cuda.get_device_name(backend.torch_device)
    print(f"device: {device}; image {args.image.name}, {expected} faces")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
