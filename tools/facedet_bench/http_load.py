"""`python -m facedet_bench.http_load`: the 2021 demo's HTTP API (`--http-listen`) against gRPC on
one server, and the HTTP frameworks against each other.

Default mode: one `facedet serve --http-listen` (started here unless --grpc/--http name a running
one) is loaded in a closed loop, N clients each sending the next request when the last is
answered: first `PUT /predictions/fd1` with the image as the body, then unary DetectFaces with the
same image, each for a warm-up and then --duration seconds (the answers that arrive within it
count, whenever they were sent: with latencies of seconds on a loaded machine, counting only
those sent and answered inside would undercount). Both go through the same batcher, so
the difference is the cost of the transport. The HTTP clients speak HTTP/1.1 over keep-alive
connections with asyncio streams (no client library), so client CPU goes to the requests.

`--frameworks`: the framework alone, without the model. Each candidate serves the demo API in a
process of its own around a service that answers every image with the same two faces at once:
aiohttp through the server's own front end (transport.http.server), uvicorn + starlette through
the equivalent app below. The same clients load each in turn: requests per second and latency
are then what the framework costs per request (parse, body read within the limit, JSON out).

Client processes share the machine with the server: on a 2-core machine the figures are lower
than either side alone would reach, and noisy when others run (say so beside them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from facedet.client.channel import channel_options
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc

FRAMEWORKS = ("aiohttp", "starlette")
MODEL_NAME = "fd1"  # the demo's model name; any name is served


@dataclass
class Result:
    mode: str
    concurrency: int
    processes: int
    duration_s: float
    requests: int
    errors: int
    req_per_s: float
    latency_ms: dict[str, float]
    # The server process's CPU time per answered request: steadier than req/s on a shared
    # machine, where others' load takes CPU away but does not add to this. None: not known
    # (a server not started here, or not Linux).
    server_cpu_ms_per_req: float | None = None


def _result(mode: str, concurrency: int, processes: int, duration: float, parts: Sequence[Any]) -> Result:
    latencies = [s for part in parts for s in part[0]]
    errors = sum(part[1] for part in parts)
    lat = np.asarray(latencies or [math.nan]) * 1000
    return Result(
        mode=mode,
        concurrency=concurrency,
        processes=processes,
        duration_s=duration,
        requests=len(latencies),
        errors=errors,
        req_per_s=round(len(latencies) / duration, 1),
        latency_ms={
            "p50": round(float(np.percentile(lat, 50)), 2),
            "p90": round(float(np.percentile(lat, 90)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2),
            "max": round(float(np.max(lat)), 2),
        },
    )


# --------------------------------------------------------------------------------------------
# Clients (run in worker processes)


def _put_request(host: str, port: int, body: bytes) -> bytes:
    head = (
        f"PUT /predictions/{MODEL_NAME} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _http_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One request on a keep-alive connection; the status. Bodies are read by Content-Length."""
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def _http_clients(
    host: str, port: int, body: bytes, clients: int, warm_until: float, end: float
) -> Any:
    request = _put_request(host, port, body)
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (started := time.perf_counter()) < end:
                try:
                    status = await _http_exchange(reader, writer, request)
                except (ConnectionError, asyncio.IncompleteReadError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                finished = time.perf_counter()
                if status != 200:
                    errors += 1
                elif warm_until <= finished <= end:
                    latencies.append(finished - started)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors


async def _grpc_clients(target: str, body: bytes, clients: int, warm_until: float, end: float) -> Any:
    latencies: list[float] = []
    errors = 0
    request = pb.DetectFacesRequest(encoded=body)
    async with grpc.aio.insecure_channel(target, options=channel_options()) as channel:
        stub = pb_grpc.FaceDetectorStub(channel)

        async def client() -> None:
            nonlocal errors
            while (started := time.perf_counter()) < end:
                try:
                    await stub.DetectFaces(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                finished = time.perf_counter()
                if warm_until <= finished <= end:
                    latencies.append(finished - started)

        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors


def _worker(
    kind: str, address: str, image: str, clients: int, start_at: float, warmup: float, duration: float
) -> Any:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    body = Path(image).read_bytes()
    # Every process starts at the same wall-clock moment, so their windows line up.
    time.sleep(max(0.0, start_at - time.time()))
    now = time.perf_counter()
    warm_until, end = now + warmup, now + warmup + duration
    if kind == "http":
        host, _, port = address.rpartition(":")
        return asyncio.run(_http_clients(host, int(port), body, clients, warm_until, end))
    return asyncio.run(_grpc_clients(address, body, clients, warm_until, end))


def split(total: int, parts: int) -> list[int]:
    return [
        total // parts + (1 if i < total % parts else 0) for i in range(parts) if total // parts or i < total
    ]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process `pid` so far (Linux), else None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    kind: str,
    address: str,
    image: str,
    concurrency: int,
    processes: int,
    warmup: float,
    duration: float,
    server_pid: int | None = None,
) -> Result:
    shares = split(concurrency, max(1, min(processes, concurrency)))
    start_at = time.time() + 1.0  # time for the workers to spawn and import
    with multiprocessing.get_context("spawn").Pool(len(shares)) as pool:
        jobs = [(kind, address, image, n, start_at, warmup, duration) for n in shares]
        waiting = pool.starmap_async(_worker, jobs)
        # The server's CPU over the measured window only (not the warm-up or the spawning).
        time.sleep(max(0.0, start_at + warmup - time.time()))
        cpu_before = cpu_seconds(server_pid)
        time.sleep(duration)
        cpu_after = cpu_seconds(server_pid)
        parts = waiting.get()
    result = _result(kind, concurrency, len(shares), duration, parts)
    if cpu_before is not None and cpu_after is not None and result.requests:
        result.server_cpu_ms_per_req = round((cpu_after - cpu_before) * 1000 / result.requests, 3)
    return result


# --------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ping(address: str, process: subprocess.Popen[bytes], log: Any, timeout: float = 120.0) -> None:
    """Until GET /ping answers 200 (the model is loaded and warm)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"http://{address}/ping", timeout=1.0) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    log.seek(0)
    raise RuntimeError(f"the server at {address} did not answer /ping; its log:\n{log.read()}")


@contextlib.contextmanager
def spawned(argv: list[str], http: str) -> Iterator[int]:
    with tempfile.TemporaryFile("w+b") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ping(http, process, log)
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve_argv(grpc_address: str, http_address: str, model: str | None, settings: Sequence[str]) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "facedet.cli",
        "serve",
        "--listen",
        grpc_address,
        "--http-listen",
        http_address,
    ]
    argv += ["--log-level", "warning", "--summary-interval", "0"]
    if model:
        argv += ["--model", model]
    return argv + list(settings)


def echo_server(framework: str, port: int) -> None:
    """Serve the demo API on 127.0.0.1:`port` with `framework` around a service that answers
    every image at once with the same two faces (zidane.jpg's): the framework's cost alone."""
    import uvloop
    from facedet_server.pipeline.base import Detection, Timing
    from facedet_server.transport.http.demo_json import faces_body

    faces = np.array(
        [
            [
                922.1,
                92.5,
                1075.7,
                283.8,
                0.87,
                965.4,
                168.0,
                1027.3,
                168.4,
                998.6,
                201.7,
                962.4,
                229.8,
                1014.2,
                230.5,
            ],
            [
                534.0,
                194.9,
                671.7,
                402.8,
                0.82,
                624.7,
                327.2,
                654.1,
                334.1,
                651.0,
                370.7,
                599.8,
                394.5,
                623.0,
                401.3,
            ],
        ],
        dtype=np.float32,
    )

    class AnswersAtOnce:
        """Stands in for DetectionService: what the framework hands it comes straight back."""

        async def detect(self, image: Any, requested: Any = None, deadline: float | None = None) -> Detection:
            return Detection(faces, 1280, 720, Timing())

        def record_rejection(self, error: Any) -> None:
            pass

    limit = 16 * 1024 * 1024
    if framework == "aiohttp":
        from facedet_server.transport.http.server import HttpFrontEnd

        async def run_aiohttp() -> None:
            front = HttpFrontEnd([f"127.0.0.1:{port}"], limit)
            front.ready(AnswersAtOnce())  # type: ignore[arg-type]  # the duck-typed stand-in
            await front.start()
            await asyncio.Event().wait()

        uvloop.run(run_aiohttp())
        return

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    service = AnswersAtOnce()

    async def predict(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > limit:
            return JSONResponse({"code": 413, "type": "BodyTooLarge", "message": "too large"}, 413)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                return JSONResponse({"code": 413, "type": "BodyTooLarge", "message": "too large"}, 413)
            chunks.append(chunk)
        detection = await service.detect(b"".join(chunks))
        return Response(faces_body(detection), media_type="application/json")

    async def ping(request: Request) -> Response:
        return JSONResponse({"status": "Healthy"})

    app = Starlette(
        routes=[
            Route("/predictions/{model_name}", predict, methods=["PUT", "POST"]),
            Route("/ping", ping, methods=["GET"]),
        ]
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


# --------------------------------------------------------------------------------------------
# Command


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0], "commit": commit.stdout.strip() or None}


def line(result: Result) -> str:
    lat = result.latency_ms
    return (
        f"{result.mode:<18} c={result.concurrency:<4} {result.req_per_s:8.1f} req/s  p50 {lat['p50']:7.2f} ms"
        f"  p90 {lat['p90']:7.2f}  p99 {lat['p99']:7.2f}  max {lat['max']:7.2f}  errors {result.errors}"
        + (f"  server {result.server_cpu_ms_per_req:.3f} CPU ms/req" if result.server_cpu_ms_per_req else "")
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m facedet_bench.http_load", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--image", help="JPEG or PNG sent with every request (required but with --frameworks)"
    )
    parser.add_argument("--grpc", metavar="ADDR", help="a running server's gRPC address (with --http)")
    parser.add_argument("--http", metavar="HOST:PORT", help="the same server's --http-listen address")
    parser.add_argument("--model", help="model of the server started here (default: as `facedet serve`)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="FLAG",
        help="a flag for the server started here, e.g. --set=--max-batch=8 (repeatable)",
    )
    parser.add_argument(
        "--concurrency", default="16", metavar="N[,N...]", help="clients; several run in turn"
    )
    parser.add_argument("--processes", type=int, default=2, metavar="P", help="client processes")
    parser.add_argument("--duration", type=float, default=10.0, metavar="S", help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, metavar="S", help="unmeasured seconds before")
    parser.add_argument("--repeat", type=int, default=1, metavar="R", help="runs of each, interleaved")
    parser.add_argument("--frameworks", action="store_true", help="aiohttp vs uvicorn + starlette, no model")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--echo-server", choices=FRAMEWORKS, help=argparse.SUPPRESS)  # --frameworks' children
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.echo_server and not args.frameworks and not args.image:
        parser.error("--image is needed")
    if bool(args.grpc) != bool(args.http):
        parser.error("--grpc and --http go together (a running server), or neither (one started here)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.echo_server:
        echo_server(args.echo_server, args.port)
        return 0
    image = args.image or str(Path(__file__).resolve().parents[3] / "shared" / "images" / "zidane.jpg")
    run = functools.partial(
        load, image=image, processes=args.processes, warmup=args.warmup, duration=args.duration
    )
    results: list[Result] = []

    def report(result: Result) -> None:
        results.append(result)
        print(line(result), file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        server_pid = None
        if not args.frameworks and not args.grpc:
            args.grpc, args.http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            argv = serve_argv(args.grpc, args.http, args.model, args.settings)
            server_pid = stack.enter_context(spawned(argv, args.http))
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            for _ in range(args.repeat):  # interleaved, so a noisy spell hits each alike
                if not args.frameworks:
                    for kind, address in (("http", args.http), ("grpc", args.grpc)):
                        report(run(kind, address, concurrency=concurrency, server_pid=server_pid))
                    continue
                for framework in FRAMEWORKS:
                    port = free_port()
                    argv = [sys.executable, "-m", "facedet_bench.http_load", "--echo-server", framework]
                    with spawned([*argv, "--port", str(port)], f"127.0.0.1:{port}") as pid:
                        result = run("http", f"127.0.0.1:{port}", concurrency=concurrency, server_pid=pid)
                    result.mode = framework
                    report(result)
    if args.json:
        print(json.dumps({"machine": machine(), "results": [asdict(r) for r in results]}, indent=2))
    else:
        for result in results:
            print(line(result))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
