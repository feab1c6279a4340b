"""How busy the GPU is while threads run whole batches:
`python -m facedet_bench.gpu_busy --model M --image I --batches 64,128 --threads 3`.

`bench_stages` times each stage alone; this answers the question its figures leave open: when
several inference threads run `GpuPipeline.infer_batch` at once, is the GPU itself the limit
(busy nearly all the time, so only less GPU work per image helps), or do the threads leave it
idle (waiting on a lock, on the host, on a synchronisation; then more parallelism helps)?

For each batch size: the throughput without the profiler, then `--seconds` more under the
PyTorch profiler (CUDA activity only), from which it reports the share of the wall time in
which at least one kernel, copy or memset ran on the GPU, and the kernels that took the most
GPU time, grouped by their name's stem.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from facedet_server.app.config import ServerConfig
from facedet_server.app.server import limits_for
from facedet_server.faces.options import Options
from facedet_server.image.inputs import EncodedImage
from facedet_server.pipeline.gpu import GpuPipeline
from facedet_server.runtime.torch_cuda import TorchCudaBackend

from facedet_bench.gpu_stages import threaded_rate

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def busy_fraction(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    """(busy, span): the length of the union of (start, end) intervals, and the time from the
    first start to the last end."""
    if not intervals:
        return 0.0, 0.0
    intervals = sorted(intervals)
    busy = 0.0
    current_start, current_end = intervals[0]
    for start, end in intervals[1:]:
        if start > current_end:
            busy += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    busy += current_end - current_start
    return busy, max(end for _, end in intervals) - intervals[0][0]


def kernel_stem(name: str) -> str:
    """A kernel name without its template arguments and parameters, so that the launches of one
    kernel add up: `void at::native::(anonymous)::foo<float>(...)` -> `at::native::foo`."""
    name = re.sub(r"\(anonymous namespace\)::", "", name)
    name = re.sub(r"^void ", "", name)
    depth, out = 0, []
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    stem = "".join(out).strip()
    # inductor's kernels (the compiled model) add up by kind: pointwise, reduction, persistent.
    return re.sub(r"^triton_(poi|red|per)_\w*", r"triton_\1", stem)[:90]


def gpu_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and e.get("cat") in GPU_CATEGORIES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--batches", default="64", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--compile-mode", choices=("off", "default", "max-autotune"), default="default")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    batches = [int(b) for b in args.batches.split(",")]
    backend = TorchCudaBackend(args.model, max_batch=max(batches), compile_mode=args.compile_mode)
    detector = GpuPipeline(backend, limits_for(ServerConfig()))
    image = EncodedImage(args.image.read_bytes())
    first = detector.prepare(image, Options())
    shape = detector.target_for(first.width, first.height)
    rows: list[dict[str, Any]] = []
    for n in batches:

        def step(n: int = n) -> int:
            detector.infer_batch([detector.prepare(image, Options()) for _ in range(n)])
            return n

        def setup() -> None:
            backend.warm_up([shape])

        rate = threaded_rate(step, args.threads, args.seconds, setup)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            profiled_rate = threaded_rate(step, args.threads, args.seconds, setup)
        with tempfile.TemporaryDirectory() as tmp:
            trace_path = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(trace_path))
            events = gpu_events(json.loads(trace_path.read_text()))
        # Only the steady state: the last `seconds` of GPU activity (the setup's captures and
        # warm-up come first).
        end = max((e["ts"] + e["dur"] for e in events), default=0.0)
        window = [e for e in events if e["ts"] >= end - args.seconds * 1e6 * 0.8]
        busy, span = busy_fraction([(e["ts"], e["ts"] + e["dur"]) for e in window])
        busy_share = busy / max(span, 1e-9)
        by_stem: dict[str, float] = defaultdict(float)
        for e in window:
            by_stem[kernel_stem(e["name"]) if e["cat"] == "kernel" else e["cat"]] += e["dur"]
        total = sum(by_stem.values()) or 1.0
        images = profiled_rate * span / 1e6
        per_image = 1.0 / max(images, 1e-9)
        print(
            f"batch {n}, {args.threads} threads: {rate:9.1f} img/s ({profiled_rate:.1f} under the "
            f"profiler); GPU busy {100 * busy_share:.1f}% of {span / 1e3:.0f} ms; GPU "
            f"time per image {busy * per_image:.1f} us busy, {total * per_image:.1f} us summed",
            flush=True,
        )
        top = sorted(by_stem.items(), key=lambda kv: -kv[1])[: args.top]
        for stem, us in top:
            print(f"    {100 * us / total:5.1f}%  {us * per_image:7.2f} us/img  {stem}")
        rows.append(
            {
                "batch": n,
                "threads": args.threads,
                "img_per_s": round(rate, 1),
                "img_per_s_profiled": round(profiled_rate, 1),
                "gpu_busy": round(busy_share, 4),
                "top": [{"kernel": stem, "share": round(us / total, 4)} for stem, us in top],
            }
        )
    device = torch.cuda.get_device_name(backend.torch_device)
    print(f"device: {device}; {args.image.name} -> {shape[0]}x{shape[1]}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
