"""`python -m facedet_bench.overload`: what a server still serves when offered far more than it can.

1. Capacity: unary DetectFaces calls one at a time for `--capacity-seconds`; images per second.
2. Burst: `--factor` x capacity calls per second, open loop (each issued on schedule whatever
   the answers), for `--burst-seconds`, each with a `--deadline` second deadline.
   Goodput is the OK answers that arrived during the burst window, per second, over capacity.
   Meanwhile a separate process checks grpc.health.v1 every `--health-interval` seconds and
   records how long each answer took.
3. The report: statuses by code, goodput, health latency percentiles, and the server's peak RSS
   (VmHWM from /proc; only for a server this command started, or one named by --pid).

By default it starts `facedet serve --model MODEL` itself on a free loopback port (add server
flags with --server-arg=--flag=value); `--target HOST:PORT` measures a running server instead.
The client runs in this process (asyncio, one channel, requests serialized once), the health
prober in another, so neither one's CPU shows up as the other's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from facedet.v1 import face_detector_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

DETECT = "/facedet.v1.FaceDetector/DetectFaces"
# The codes a call may end with under overload; anything else is a failure of the server.
ALLOWED = frozenset({"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE"})
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass
class Report:
    capacity_img_s: float
    offered_img_s: float
    burst_seconds: float
    deadline_s: float
    calls: int
    statuses: dict[str, int]
    ok_in_window: int
    goodput_img_s: float
    goodput_of_capacity: float
    ok_total: int
    last_answer_s: float  # seconds after the burst began that the last call ended
    retry_hints: int  # RESOURCE_EXHAUSTED answers that carried both retry hints
    ok_p50_ms: float  # latency of the OK calls
    ok_p99_ms: float
    refused_p99_ms: float  # how soon a RESOURCE_EXHAUSTED came back
    health_checks: int
    health_failures: int
    health_p50_ms: float
    health_p99_ms: float
    health_max_ms: float
    server_peak_rss_mib: float | None
    server_rss_before_mib: float | None
    unexpected: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        rss = (
            f"{self.server_peak_rss_mib:.0f} MiB (at start {self.server_rss_before_mib:.0f} MiB)"
            if self.server_peak_rss_mib is not None and self.server_rss_before_mib is not None
            else "unknown (no local pid)"
        )
        return [
            f"capacity (one call at a time): {self.capacity_img_s:.1f} img/s",
            f"burst: {self.offered_img_s:.0f} calls/s for {self.burst_seconds:g} s, deadline "
            f"{self.deadline_s:g} s, {self.calls} calls",
            f"statuses: {json.dumps(self.statuses, sort_keys=True)}",
            f"goodput: {self.goodput_img_s:.1f} img/s = {100 * self.goodput_of_capacity:.0f}% of capacity "
            f"({self.ok_in_window} OK in the window, {self.ok_total} in all; last answer at "
            f"{self.last_answer_s:.1f} s)",
            f"OK latency: p50 {self.ok_p50_ms:.0f} ms, p99 {self.ok_p99_ms:.0f} ms; RESOURCE_EXHAUSTED "
            f"p99 {self.refused_p99_ms:.0f} ms, {self.retry_hints} with a retry hint",
            f"health: {self.health_checks} checks, {self.health_failures} failed, p50 "
            f"{self.health_p50_ms:.1f} ms, p99 {self.health_p99_ms:.1f} ms, max {self.health_max_ms:.1f} ms",
            f"server peak RSS: {rss}",
        ]


def rss_mib(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------------------------
# The health prober (its own process)


def probe_health(target: str, interval: float, stop: Any, out: Any) -> None:
    latencies: list[float] = []
    failures = 0
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # connected before it counts
        out.put("ready")
        while not stop.is_set():
            started = time.perf_counter()
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                latencies.append(time.perf_counter() - started)
            except grpc.RpcError:
                failures += 1
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    out.put((latencies, failures))


# --------------------------------------------------------------------------------------------
# The load


def _detect_call(channel: grpc.aio.Channel) -> Any:
    """DetectFaces taking the request serialized (once, up front) and answering bytes."""
    return channel.unary_unary(DETECT, request_serializer=None, response_deserializer=None)


async def _capacity(channel: grpc.aio.Channel, request: bytes, seconds: float) -> float:
    call = _detect_call(channel)
    for _ in range(3):  # warm
        await call(request, timeout=30)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        await call(request, timeout=30)
        count += 1
    return count / (time.perf_counter() - started)


def has_retry_hint(metadata: Any) -> bool:
    """Whether trailing metadata carries both retry hints, `retry-after-ms` and gRPC's
    `grpc-retry-pushback-ms` (aio gives grpc.aio.Metadata, whose items are (key, value) pairs)."""
    keys = {key for key, _ in tuple(metadata or ())}
    return {"retry-after-ms", "grpc-retry-pushback-ms"} <= keys


@dataclass
class _Outcome:
    code: str
    ended: float  # seconds after the burst began
    seconds: float  # how long the call took
    retry_hint: bool


async def _one(call: Any, request: bytes, deadline: float, t0: float, out: list[_Outcome]) -> None:
    hint, started = False, time.perf_counter()
    try:
        await call(request, timeout=deadline)
        code = "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        hint = has_retry_hint(exc.trailing_metadata())
    ended = time.perf_counter()
    out.append(_Outcome(code, ended - t0, ended - started, hint))


async def _burst(
    channel: grpc.aio.Channel, request: bytes, rate: float, seconds: float, deadline: float
) -> tuple[list[_Outcome], int]:
    call = _detect_call(channel)
    outcomes: list[_Outcome] = []
    tasks = []
    total = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(call, request, deadline, t0, outcomes)))
    await asyncio.gather(*tasks)
    return outcomes, total


async def _measure(target: str, request: bytes, args: argparse.Namespace, pid: int | None) -> Report:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        capacity = args.capacity or await _capacity(channel, request, args.capacity_seconds)
        rate = capacity * args.factor
        ctx = multiprocessing.get_context("spawn")
        stop, results = ctx.Event(), ctx.Queue()
        prober = ctx.Process(target=probe_health, args=(target, args.health_interval, stop, results))
        prober.start()
        if results.get(timeout=30) != "ready":
            raise RuntimeError("health prober did not start")
        rss_before = rss_mib(pid, "VmRSS") if pid else None
        outcomes, calls = await _burst(channel, request, rate, args.burst_seconds, args.deadline)
        stop.set()
        latencies, failures = results.get(timeout=30)
        prober.join(10)
    statuses = Counter(o.code for o in outcomes)
    ok_window = sum(1 for o in outcomes if o.code == "OK" and o.ended <= args.burst_seconds)
    goodput = ok_window / args.burst_seconds
    lat_ms = np.asarray(latencies or [float("nan")]) * 1000

    def percentile_ms(code: str, q: float) -> float:
        seconds = [o.seconds for o in outcomes if o.code == code] or [float("nan")]
        return round(float(np.percentile(seconds, q)) * 1000, 1)

    return Report(
        capacity_img_s=round(capacity, 2),
        offered_img_s=round(rate, 1),
        burst_seconds=args.burst_seconds,
        deadline_s=args.deadline,
        calls=calls,
        statuses=dict(statuses),
        ok_in_window=ok_window,
        goodput_img_s=round(goodput, 2),
        goodput_of_capacity=round(goodput / capacity, 3),
        ok_total=statuses.get("OK", 0),
        last_answer_s=round(max((o.ended for o in outcomes), default=0.0), 2),
        retry_hints=sum(1 for o in outcomes if o.retry_hint),
        ok_p50_ms=percentile_ms("OK", 50),
        ok_p99_ms=percentile_ms("OK", 99),
        refused_p99_ms=percentile_ms("RESOURCE_EXHAUSTED", 99),
        health_checks=len(latencies),
        health_failures=failures,
        health_p50_ms=round(float(np.percentile(lat_ms, 50)), 2),
        health_p99_ms=round(float(np.percentile(lat_ms, 99)), 2),
        health_max_ms=round(float(np.max(lat_ms)), 2),
        server_peak_rss_mib=rss_mib(pid, "VmHWM") if pid else None,
        server_rss_before_mib=rss_before,
        unexpected={code: n for code, n in statuses.items() if code not in ALLOWED},
    )


# --------------------------------------------------------------------------------------------
# The server under test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(target: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"server not SERVING within {timeout} s")


# Where a checkout keeps its Python packages (pyproject.toml's packages.find).
PACKAGE_ROOTS = ("clients/python", "server", "converter", "trt_runtime", "tools")


def start_server(
    model: Path, server_args: list[str], log: Path, checkout: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`facedet serve` on a free loopback port, SERVING; from `checkout` (another checkout's
    packages ahead of the installed ones, e.g. a worktree of an older commit) when given."""
    port = _free_port()
    target = f"127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "facedet.cli", "serve", "--model", str(model), "--listen", target, *server_args
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEDET_")}
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join(str(checkout.resolve() / root) for root in PACKAGE_ROOTS)
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    try:
        _wait_serving(target, proc, 120)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, target


def run(args: argparse.Namespace) -> Report:
    request = pb.DetectFacesRequest(encoded=args.image.read_bytes()).SerializeToString()
    proc = None
    target, pid = args.target, args.pid
    if target is None:
        if args.model is None:
            raise SystemExit("--model is needed unless --target names a running server")
        proc, target = start_server(args.model, args.server_arg, args.server_log, args.server_checkout)
        pid = proc.pid
    try:
        return asyncio.run(_measure(target, request, args, pid))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m facedet_bench.overload", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="model for the server this command starts")
    p.add_argument("--image", type=Path, required=True, help="the image every call sends (zidane.jpg)")
    p.add_argument("--target", help="HOST:PORT of a running server, instead of starting one")
    p.add_argument("--pid", type=int, help="with --target: the server's pid, for its peak RSS")
    p.add_argument("--server-arg", action="append", default=[], help="a flag for the server started")
    p.add_argument(
        "--server-checkout",
        type=Path,
        help="run the server from this checkout's code (e.g. a git worktree of an older commit)",
    )
    p.add_argument("--server-log", type=Path, default=Path("/tmp/facedet-overload-server.log"))
    p.add_argument("--capacity-seconds", type=float, default=8.0)
    p.add_argument("--capacity", type=float, default=0.0, help="skip step 1 and take this capacity")
    p.add_argument("--factor", type=float, default=10.0, help="offered load, in capacities")
    p.add_argument("--burst-seconds", type=float, default=10.0)
    p.add_argument("--deadline", type=float, default=8.0, help="each burst call's deadline, seconds")
    p.add_argument("--health-interval", type=float, default=0.02)
    p.add_argument("--json", type=Path, help="also write the report here, as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report = run(args)
    for line in report.lines():
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 1 if report.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
