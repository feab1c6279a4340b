"""A flood of tiny DetectFaces calls at a fixed rate, open loop, offered by `facedet-flood`
(clients/go/cmd/facedet-flood, built by `make clients-go`): a Python client on the same two
cores issues about 4,000 calls a second, too few to say what 10,000 do to the server; the Go
one issues 10,000 at about a quarter of a core and leaves the rest to the server.

    python -m facedet_bench.flood --model ../shared/models/yolov5n-0.5.onnx --rate 10000 --duration 3

Each call sends a 16x16 JPEG with a deadline, spread over `--connections` HTTP/2 connections.
First a one-second flood, not counted, grows ONNX Runtime's arena to the largest batch the load
forms (it stays that size: memory the server keeps, not memory the flood costs); then the peak
RSS is reset and the flood measured. Reported: the rate offered, how each call ended as the
client saw it and as the server counted it (`facedet_requests_total`: only calls that reached
facedet's code), the server's peak RSS growth, health-check latency during the flood (its own
process and connection, as a kubelet's probe would be), and whether a photo is answered right
after. With `--server HOST:PORT --metrics HOST:PORT [--server-pid PID]` it floods a server
already running; by default it starts its own (`--model`)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from facedet_bench.hostile import small_jpeg
from facedet_bench.overload import probe_health
from facedet_bench.own_server import OwnServer, free_port, peak_rss_mib, reset_peak_rss, rss_mib

REPO = Path(__file__).resolve().parents[2]
FLOOD_BIN = Path(os.environ.get("FACEDET_FLOOD_BIN") or REPO / "build" / "clients" / "facedet-flood")


@dataclass
class FloodReport:
    rate: float  # calls a second asked for
    started: int  # calls the client started (NOT_SENT among them: no slot free)
    offered_per_s: float  # started / the seconds starting them took
    seconds: float  # until the last call ended
    client_codes: dict[str, int]  # how the calls ended, as the client saw them
    server_codes: dict[str, int]  # as facedet counted them (the calls that reached its code)
    latency_ms_p50: float
    latency_ms_p99: float
    peak_rss_growth_mib: float | None
    health_p50_ms: float
    health_p99_ms: float
    health_failures: int
    photo_faces_after: int


def run_flood(
    target: str, image: Path, rate: float, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """facedet-flood's JSON report."""
    if not FLOOD_BIN.exists():
        raise SystemExit(f"{FLOOD_BIN} is missing: `make clients-go` builds it (or set FACEDET_FLOOD_BIN)")
    command = [
        str(FLOOD_BIN),
        "--server",
        target,
        "--image",
        str(image),
        f"--rate={rate:g}",
        f"--duration={seconds:g}s",
        f"--connections={args.connections}",
        f"--in-flight={args.in_flight}",
        f"--deadline={args.deadline:g}s",
    ]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=seconds + args.deadline + 90
    )
    if done.returncode != 0:
        raise RuntimeError(f"facedet-flood failed ({done.returncode}): {done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def request_codes(metrics_url: str, method: str = "DetectFaces") -> dict[str, int]:
    """facedet_requests_total of `method`, by code, from the server's /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    codes: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "facedet_requests_total" and sample.labels.get("method") == method:
                codes[sample.labels["code"]] = int(sample.value)
    return codes


def _photo_faces(target: str, photo: bytes) -> int:
    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.FaceDetectorStub(channel).DetectFaces(
            pb.DetectFacesRequest(encoded=photo), timeout=30
        )
    return len(response.faces)


def flood(
    target: str, metrics_url: str, pid: int | None, photo: bytes, args: argparse.Namespace
) -> FloodReport:
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "tiny.jpg"
        image.write_bytes(small_jpeg())
        run_flood(target, image, min(args.rate, 2000.0), 1.0, args)  # the warm-up: not counted
        before = request_codes(metrics_url)
        base = None
        if pid is not None:
            reset_peak_rss(pid)
            base = rss_mib(pid)
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that has used gRPC
        stop, out = ctx.Event(), ctx.Queue()
        prober = ctx.Process(target=probe_health, args=(target, 0.05, stop, out), daemon=True)
        prober.start()
        if out.get(timeout=30) != "ready":
            raise RuntimeError("the health prober did not connect")
        try:
            measured = run_flood(target, image, args.rate, args.duration, args)
        finally:
            stop.set()
        latencies, failures = out.get(timeout=30)
        prober.join(10)
    growth = None if pid is None or base is None else peak_rss_mib(pid) - base
    after = request_codes(metrics_url)
    server_codes = {code: after[code] - before.get(code, 0) for code in after}
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    return FloodReport(
        rate=args.rate,
        started=measured["started"],
        offered_per_s=measured["started"] / measured["start_seconds"],
        seconds=measured["seconds"],
        client_codes=dict(sorted(measured["codes"].items())),
        server_codes={code: n for code, n in sorted(server_codes.items()) if n},
        latency_ms_p50=measured["latency_ms_p50"],
        latency_ms_p99=measured["latency_ms_p99"],
        peak_rss_growth_mib=growth,
        health_p50_ms=statistics.median(ms),
        health_p99_ms=ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        health_failures=failures,
        photo_faces_after=_photo_faces(target, photo),
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m facedet_bench.flood", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="start a server of this model (the default: no --server given)")
    p.add_argument("--server", help="HOST:PORT of a running server (plaintext TCP) to flood instead")
    p.add_argument("--metrics", help="HOST:PORT of that server's --metrics-listen (with --server)")
    p.add_argument("--server-pid", type=int, help="that server's pid, for its peak RSS")
    p.add_argument(
        "--server-arg", action="append", default=[], help="a `facedet serve` flag for its own server"
    )
    p.add_argument("--rate", type=float, default=10_000, help="calls a second (default 10000)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of flood (default 3)")
    p.add_argument("--connections", type=int, default=20, help="HTTP/2 connections (default 20)")
    p.add_argument("--in-flight", type=int, default=40_000, help="calls in flight at most (default 40000)")
    p.add_argument("--deadline", type=float, default=10.0, help="each call's deadline, seconds (default 10)")
    p.add_argument(
        "--photo", type=Path, help="a photo to detect after the flood (default: a synthetic 64x64)"
    )
    p.add_argument("--json", type=Path, help="also write the report here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    photo = args.photo.read_bytes() if args.photo else small_jpeg(64)
    if args.server:
        if not args.metrics:
            raise SystemExit(
                "--server needs --metrics HOST:PORT: the server's own counts are part of the report"
            )
        report = flood(args.server, f"http://{args.metrics}/metrics", args.server_pid, photo, args)
    else:
        if not args.model:
            raise SystemExit("give --model (a server of its own) or --server and --metrics")
        metrics = f"127.0.0.1:{free_port()}"
        with OwnServer(args.model, ["--metrics-listen", metrics, *args.server_arg]) as server:
            report = flood(server.target, f"http://{metrics}/metrics", server.pid, photo, args)
    text = json.dumps(asdict(report), indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
