"""Model-only GPU throughput: `python -m facedet_bench.gpu_model --model M.onnx`.

Times our PyTorch YOLOv5-Face (decode included, NMS excluded) on random FP16 input for each
(shape, batch) in eager mode, with a captured CUDA graph, and optionally with torch.compile,
using CUDA events around each iteration. Prints a table; --json writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from facedet_server.runtime.torch_cuda import TorchCudaBackend

Step = Callable[[torch.Tensor], torch.Tensor]


def _time(call: Step, batch: torch.Tensor, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call(batch)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        call(batch)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--shapes", default="640x640,640x384", help="WxH list")
    parser.add_argument("--modes", default="eager,graph", help="eager, graph, compile")
    parser.add_argument(
        "--compile-mode",
        choices=("off", "default", "max-autotune"),
        default="off",
        help="inductor under the server's per-bucket graphs (what `--compile` runs); mode graph",
    )
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    backend = TorchCudaBackend(args.model, max_batch=max(batches), compile_mode=args.compile_mode)
    rows = []
    compiled = None
    for shape in args.shapes.split(","):
        w, h = (int(v) for v in shape.split("x"))
        if "graph" in args.modes.split(","):
            started = time.perf_counter()
            backend.warm_up([(w, h)])  # compiles (when on) and captures every bucket
            print(f"{w}x{h}: warm-up (compile, captures) {time.perf_counter() - started:.1f} s", flush=True)
        for n in batches:
            x = torch.rand((n, 3, h, w), device=backend.torch_device, dtype=backend.dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            for mode in args.modes.split(","):
                fn: Step
                if mode == "eager":
                    fn = backend.module
                elif mode == "graph":
                    fn = backend.forward
                else:
                    if compiled is None:
                        compiled = torch.compile(backend.module, mode="reduce-overhead", dynamic=False)
                    fn = compiled
                started = time.perf_counter()
                with torch.inference_mode():
                    times = _time(fn, x, args.iters, warmup=5 if mode != "compile" else 10)
                setup_s = time.perf_counter() - started - sum(times) / 1000
                ms = np.asarray(times)
                row = {
                    "shape": f"{w}x{h}",
                    "batch": n,
                    "mode": mode if mode != "graph" else f"graph/{args.compile_mode}",
                    "img_per_s": round(n / (float(np.median(ms)) / 1000), 1),
                    "p50_ms": round(float(np.percentile(ms, 50)), 3),
                    "p99_ms": round(float(np.percentile(ms, 99)), 3),
                    "setup_s": round(setup_s, 1),  # warm-up, capture and compilation
                }
                rows.append(row)
                print(
                    f"{row['shape']:>8} b={n:<4} {row['mode']:<14} {row['img_per_s']:>10.1f} img/s  "
                    f"p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  setup {setup_s:.1f} s",
                    flush=True,
                )
    print(f"device: {torch.cuda.get_device_name(backend.torch_device)}, torch {torch.__version__}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
