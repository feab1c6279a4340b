"""Throughput with 1, 2, 3... replicas on one machine, one client target over all of them.

    python -m facedet_bench.replicas --model yolov5n-0.5.onnx --image zidane.jpg \
        --replicas 1,2,3 --concurrency 16 --duration 10

For each count N: start N `facedet serve` processes (each with SERVE_ARGS, e.g.
`--serve-args "--batch-workers 1"`), load them through one `ipv4:` list (the client balances
with round_robin, as a Kubernetes client does over a headless Service), print img/s and
latency, stop them. On one machine the replicas share its cores: the figure says what
balancing costs and what the cores give, not what N machines would."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from facedet_bench.own_server import OwnServer


def bench(target: str, image: str, concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "facedet.cli", "bench", "--server", target, "--image", image,
        "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup), "--json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):  # 1: some requests failed, which the report shows
        raise RuntimeError(f"facedet bench exited {done.returncode}: {done.stderr[-2000:]}")
    run: dict[str, Any] = json.loads(done.stdout)["runs"][0]
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facedet_bench.replicas", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help="model file every replica serves")
    parser.add_argument("--image", required=True, help="JPEG sent with every request")
    parser.add_argument("--replicas", default="1,2,3", help="replica counts to measure, in order")
    parser.add_argument("--concurrency", type=int, default=16, help="clients over all replicas")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per count")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before")
    parser.add_argument("--serve-args", default="", help="extra `facedet serve` flags for every replica")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.replicas.split(",")]
    if not counts or min(counts) < 1:
        parser.error("--replicas takes counts >= 1, e.g. 1,2,3")
    results = []
    for count in counts:
        with contextlib.ExitStack() as stack:
            serve_args = shlex.split(args.serve_args)
            servers = [stack.enter_context(OwnServer(args.model, serve_args)) for _ in range(count)]
            target = "ipv4:" + ",".join(server.target for server in servers)
            run = bench(target, args.image, args.concurrency, args.duration, args.warmup)
        lat = run["latency_ms"]
        kept = {key: run[key] for key in ("img_per_s", "requests", "errors", "latency_ms")}
        results.append({"replicas": count, **kept})
        print(
            f"replicas {count}: {run['img_per_s']:8.1f} img/s  p50 {lat['p50']:.1f} ms"
            f"  p99 {lat['p99']:.1f} ms  errors {run['errors'] or 'none'}",
            flush=True,
        )
    base = results[0]["img_per_s"]
    for result in results[1:]:
        print(f"{result['replicas']} replicas / {results[0]['replicas']}: {result['img_per_s'] / base:.2f}x")
    return 0 if all(not r["errors"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
