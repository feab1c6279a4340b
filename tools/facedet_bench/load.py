"""`facedet bench`: a closed-loop load generator, through gRPC or in-process.

Closed loop: each of N clients sends its next request as soon as its previous answer arrives, so
the figures are the throughput at N requests outstanding and the latency each one sees. Answers
that finish during the warm-up are not counted; the run stops by itself after warm-up + duration,
or earlier when the server stops answering (`reachability`). Any failed request makes the
command exit 1. On a terminal, a progress line on stderr shows the run as it goes (`progress`).

Through gRPC, the clients run on asyncio in `--processes` worker processes, each with its own
channel, sending one request serialized up front, so client CPU goes to gRPC itself. In-process,
the same `DetectionService` the server runs (decode pool, batcher, backend) is called directly:
the difference between the two is the cost of gRPC. `--compare` runs both at each concurrency.

Nothing here runs at import: worker processes are spawned and import this module afresh.
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
import queue
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    MutableSequence,
    Sequence,
)
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO, TypeVar

import grpc
import numpy as np
from facedet.client import FaceDetectorClient, FaceDetectorError
from facedet.client.channel import DETECT_METHOD, STREAM_METHOD, channel_options, with_default_port
from facedet.client.discovery import dialable, list_target
from facedet.client.messages import code_name
from facedet.v1 import face_detector_pb2 as pb
from facedet_server.app import config as server_config
from facedet_server.model.files import ModelFileError
from facedet_server.pipeline.base import TIMING_FIELDS, Timing
from facedet_server.serving.service import DetectionService

from facedet_bench import progress
from facedet_bench.progress import Slot
from facedet_bench.reachability import GIVE_UP_S, OTHER_ERROR_WAIT_S, Backoff, Reachability

T = TypeVar("T")
CLIENTS_PER_PROCESS = 32
QUIET_ATTEMPTS = 3  # with --max-other-cpu, tries per wanted pair before keeping a noisy one
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs
# With --rate and no --concurrency, the in-flight cap leaves each request this long (Little's
# law: rate x latency in flight) before the offered rate is no longer held.
OPEN_LOOP_LATENCY_S = 0.25


# pb.Timing or the pipeline's Timing: the message's fields are the dataclass's, by name.
TimingLike = pb.Timing | Timing


# --------------------------------------------------------------------------------------------
# Measurements


@dataclass(frozen=True)
class Load:
    """What one run does; picklable, as worker processes receive it."""

    concurrency: int  # clients (streams, with --stream)
    warmup: float
    duration: float
    stream: bool = False
    window: int = 1  # frames in flight per stream
    # Open loop: requests per second offered by this process (0 = closed loop). `concurrency`
    # then caps the requests in flight.
    rate: float = 0.0

    @property
    def in_flight(self) -> int:
        return self.concurrency * (self.window if self.stream else 1)

    @property
    def label(self) -> str:
        """Which run this is, for the progress line."""
        if self.rate > 0:
            return f"open loop {self.rate:g} img/s"
        return f"concurrency {self.concurrency}" + (f"x{self.window}" if self.stream else "")


def open_loop_in_flight(rate: float) -> int:
    """The in-flight cap for `--rate R` without --concurrency: room for R x OPEN_LOOP_LATENCY_S
    requests, and never less than one client process's worth."""
    return max(CLIENTS_PER_PROCESS, math.ceil(rate * OPEN_LOOP_LATENCY_S))


@dataclass(frozen=True)
class Window:
    """The measured interval, in this process's perf_counter time."""

    start: float
    end: float

    @classmethod
    def after_warmup(cls, load: Load) -> Window:
        start = time.perf_counter() + load.warmup
        return cls(start, start + load.duration)

    def counts(self, finished: float) -> bool:
        return self.start <= finished <= self.end

    def measured_s(self, now: float) -> float:
        """How much of the window has passed at `now`."""
        return min(max(now - self.start, 0.0), self.end - self.start)


@dataclass
class Samples:
    """Raw results of one load generator; merged across worker processes."""

    latencies_s: list[float] = field(default_factory=list)
    timing_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_FIELDS, 0.0))
    errors: Counter[str] = field(default_factory=Counter)
    cpu_s: dict[str, float] = field(default_factory=dict)  # "client", "server" or "process"
    delayed: int = 0  # open loop: requests sent late because the in-flight cap was reached
    measured_s: float | None = None  # of the window, once the load is over (less if it ended early)
    ended_early: str = ""  # why it did, if it did

    def add(self, latency_s: float, timing: TimingLike) -> None:
        self.latencies_s.append(latency_s)
        for name in TIMING_FIELDS:
            self.timing_sums[name] += getattr(timing, name)

    def merge(self, other: Samples) -> None:
        self.latencies_s.extend(other.latencies_s)
        for name in TIMING_FIELDS:
            self.timing_sums[name] += other.timing_sums[name]
        self.errors.update(other.errors)
        for name, seconds in other.cpu_s.items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + seconds
        self.delayed += other.delayed
        # Worker processes stop on their own when the server goes: the run lasted as long as
        # the longest of them.
        if other.measured_s is not None:
            self.measured_s = max(self.measured_s or 0.0, other.measured_s)
        self.ended_early = self.ended_early or other.ended_early

    def publish(self, slot: Slot, window: Window) -> None:
        slot.publish(len(self.latencies_s), sum(self.errors.values()), window.measured_s(time.perf_counter()))

    def finish(self, window: Window, reachability: Reachability | None = None) -> None:
        """The load is over: note how much of the window it covered, and why it stopped early."""
        stopped_at = reachability.stopped_at if reachability is not None else None
        self.measured_s = window.measured_s(window.end if stopped_at is None else stopped_at)
        if stopped_at is not None and reachability is not None:
            self.ended_early = reachability.reason


def _process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of another process, from /proc (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine (every process), from /proc/stat (Linux)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


async def _measure_cpu(
    window: Window, samples: Samples, own: str, server_pid: int | None, whole_machine: bool
) -> None:
    """CPU used during the window by this process (all threads), the server if its pid is known,
    and the whole machine: what is left is other people's load, which skews a run on a shared box.
    Cancelled (a run ended early), it keeps what it measured so far."""
    readers: dict[str, Callable[[], float | None]] = {own: time.process_time}
    if server_pid:
        readers["server"] = lambda: _process_cpu_s(server_pid)
    if whole_machine:
        readers["machine"] = _machine_busy_s
    await asyncio.sleep(max(window.start - time.perf_counter(), 0))
    started = {name: read() for name, read in readers.items()}
    try:
        await asyncio.sleep(max(window.end - time.perf_counter(), 0))
    finally:
        for name, read in readers.items():
            before, after = started[name], read()
            if before is not None and after is not None:
                samples.cpu_s[name] = samples.cpu_s.get(name, 0.0) + after - before


@contextlib.asynccontextmanager
async def _published(slot: Slot | None, window: Window, samples: Samples) -> AsyncIterator[None]:
    """While inside, keep this generator's counts in its progress slot (if it has one)."""

    async def keep() -> None:
        assert slot is not None
        try:
            while True:
                samples.publish(slot, window)
                await asyncio.sleep(progress.INTERVAL_S)
        finally:
            samples.publish(slot, window)

    task = None if slot is None else asyncio.create_task(keep())
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _until_stopped(work: Sequence[Coroutine[Any, Any, None]], stopped: asyncio.Event) -> None:
    """Run `work` to its end, or cancel it once `stopped` is set (the server went away: calls
    still waiting on it would hold the run up for nothing)."""
    together = asyncio.gather(*work)
    stop = asyncio.ensure_future(stopped.wait())
    either: list[asyncio.Future[Any]] = [together, stop]
    cut_short = False
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not together.done():
            cut_short = together.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await together
    if not cut_short:
        together.result()  # a client's own exception


# --------------------------------------------------------------------------------------------
# Load through gRPC


def _record_response(data: bytes, started: float, finished: float, samples: Samples) -> None:
    response = pb.DetectFacesResponse.FromString(data)
    if response.HasField("error"):
        samples.errors[code_name(response.error.code)] += 1
    else:
        samples.add(finished - started, response.timing)


def _record_failure(exc: grpc.aio.AioRpcError, window: Window, samples: Samples, backoff: Backoff) -> float:
    """Count a failed call; returns how long to wait before the next."""
    now = time.perf_counter()
    status = exc.code().name
    if window.counts(now):
        samples.errors[status] += 1
    return backoff.failed(status, now)


async def _unary_client(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    request: bytes,
    window: Window,
    samples: Samples,
    reachability: Reachability,
) -> None:
    backoff = Backoff(reachability)
    while (started := time.perf_counter()) < window.end:
        try:
            data = await call(request)
        except grpc.aio.AioRpcError as exc:
            wait = _record_failure(exc, window, samples, backoff)
            await asyncio.sleep(min(wait, max(window.end - time.perf_counter(), 0)))
            continue
        backoff.answered()
        finished = time.perf_counter()
        if window.counts(finished):
            _record_response(data, started, finished, samples)


async def _open_loop_client(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    request: bytes,
    load: Load,
    window: Window,
    samples: Samples,
    reachability: Reachability,
) -> None:
    """Offer `load.rate` requests per second on a fixed schedule, whatever the answers do.
    Latency counts from each request's scheduled time, so a server that falls behind shows it
    (no coordinated omission); at most `load.concurrency` are in flight, and a request that has
    to wait for one to finish is counted as delayed. After UNAVAILABLE the schedule pauses for
    the backoff and resumes from then (the requests it skipped are not offered)."""
    slots = asyncio.Semaphore(load.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    backoff = Backoff(reachability)
    paused_until = 0.0

    async def one(scheduled: float) -> None:
        nonlocal paused_until
        try:
            data = await call(request)
        except grpc.aio.AioRpcError as exc:
            wait = _record_failure(exc, window, samples, backoff)
            if backoff.failures:
                paused_until = max(paused_until, time.perf_counter() + wait)
            return
        finally:
            slots.release()
        backoff.answered()
        finished = time.perf_counter()
        if window.counts(finished):
            _record_response(data, scheduled, finished, samples)

    start = time.perf_counter()
    k = 0
    try:
        while (scheduled := start + k / load.rate) < window.end:
            k += 1
            if scheduled < paused_until:
                await asyncio.sleep(paused_until - time.perf_counter())
                start, k = time.perf_counter(), 0
                continue
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if slots.locked() and window.counts(time.perf_counter()):
                samples.delayed += 1  # (by its send time: behind schedule, `scheduled` may be long past)
            await slots.acquire()
            if time.perf_counter() >= window.end:  # held up past the end: its answer would not count
                slots.release()
                break
            task = asyncio.create_task(one(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:  # cancelled: the run ended early
            task.cancel()


async def _stream_client(
    method: grpc.aio.StreamStreamMultiCallable[bytes, bytes],
    request: bytes,
    depth: int,
    window: Window,
    samples: Samples,
    reachability: Reachability,
) -> None:
    """One client: a stream at a time, opened again (after the backoff) when one fails."""
    backoff = Backoff(reachability)
    while time.perf_counter() < window.end:
        try:
            return await _one_stream(method, request, depth, window, samples, backoff)
        except grpc.aio.AioRpcError as exc:
            wait = _record_failure(exc, window, samples, backoff)
            await asyncio.sleep(min(wait, max(window.end - time.perf_counter(), 0)))


async def _one_stream(
    method: grpc.aio.StreamStreamMultiCallable[bytes, bytes],
    request: bytes,
    depth: int,
    window: Window,
    samples: Samples,
    backoff: Backoff,
) -> None:
    """One stream keeping `depth` frames in flight: a frame goes out as soon as one comes back."""
    call = method(None)  # requests are written with call.write, closed-loop
    sent: deque[float] = deque()
    slots = asyncio.Semaphore(depth)

    async def send() -> None:
        while True:
            await slots.acquire()
            if time.perf_counter() >= window.end:
                break
            sent.append(time.perf_counter())
            await call.write(request)
        await call.done_writing()

    sender = asyncio.create_task(send())
    try:
        while (data := await call.read()) is not _EOF:
            finished = time.perf_counter()
            backoff.answered()
            started = sent.popleft()
            slots.release()
            if window.counts(finished):
                assert isinstance(data, bytes)
                _record_response(data, started, finished, samples)
    finally:
        sender.cancel()
        call.cancel()  # no-op once the stream is over; ends it when the run stops early
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await sender


async def grpc_load(
    target: str,
    request: bytes,
    load: Load,
    server_pid: int | None = None,
    barrier: Any = None,
    first: bool = True,
    live: Slot | None = None,
) -> Samples:
    """Run `load` against `target` from this process; `barrier` lines up worker processes so
    their measured windows coincide. Only the `first` process measures the machine's CPU.
    `live`: where to keep the running counts for the progress line."""
    channel = grpc.aio.insecure_channel(target, options=channel_options(target=target))
    try:
        await asyncio.wait_for(channel.channel_ready(), 30)
        if barrier is not None:
            await asyncio.to_thread(barrier.wait)
        window = Window.after_warmup(load)
        samples = Samples()
        reachability = Reachability()
        clients: list[Coroutine[Any, Any, None]]
        # No serializers: the request is serialized once and responses parsed only when counted.
        if load.stream:
            stream = channel.stream_stream(STREAM_METHOD, None, None)
            clients = [
                _stream_client(stream, request, load.window, window, samples, reachability)
                for _ in range(load.concurrency)
            ]
        elif load.rate > 0:
            unary = channel.unary_unary(DETECT_METHOD, None, None)
            clients = [_open_loop_client(unary, request, load, window, samples, reachability)]
        else:
            unary = channel.unary_unary(DETECT_METHOD, None, None)
            clients = [
                _unary_client(unary, request, window, samples, reachability) for _ in range(load.concurrency)
            ]
        async with _published(live, window, samples):
            cpu = _measure_cpu(window, samples, "client", server_pid, first)
            await _until_stopped([cpu, *clients], reachability.stopped)
        samples.finish(window, reachability)
        return samples
    finally:
        await channel.close(None)


def split(total: int, parts: int) -> list[int]:
    """`total` clients over `parts` processes, as evenly as possible, none empty."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _worker_main(
    target: str,
    request: bytes,
    load: Load,
    server_pid: int | None,
    barrier: Any,
    first: bool,
    results: Any,
    live: Slot | None,
) -> None:
    try:
        results.put(run_loop(grpc_load(target, request, load, server_pid, barrier, first, live)))
    except BaseException as exc:
        barrier.abort()
        results.put(RuntimeError(f"bench worker failed: {exc!r}"))


async def grpc_run(
    target: str,
    request: bytes,
    load: Load,
    processes: int,
    server_pid: int | None,
    live: MutableSequence[float] | None = None,
) -> Samples:
    """`load` from `processes` processes; `live`: the progress slots, one per process."""
    if processes <= 1:
        return await grpc_load(
            target, request, load, server_pid, live=None if live is None else Slot(live, 0)
        )
    # spawn, not fork: the parent may hold ONNX Runtime and gRPC threads, which fork does not copy.
    context = multiprocessing.get_context("spawn")
    shares = split(load.concurrency, processes)
    barrier = context.Barrier(len(shares))
    results = context.Queue()
    workers = [
        context.Process(
            target=_worker_main,
            args=(
                target,
                request,
                replace(load, concurrency=share, rate=load.rate * share / load.concurrency),
                server_pid if i == 0 else None,
                barrier,
                i == 0,
                results,
                None if live is None else Slot(live, i),
            ),
            daemon=True,
        )
        for i, share in enumerate(shares)
    ]
    for worker in workers:
        worker.start()
    timeout = 60 + load.warmup + load.duration
    try:
        gathered = [await asyncio.to_thread(results.get, True, timeout) for _ in workers]
    except queue.Empty:
        raise RuntimeError(f"bench workers sent no results within {timeout:.0f} s") from None
    for worker in workers:
        await asyncio.to_thread(worker.join, 10)
    merged = Samples()
    for part in gathered:
        if isinstance(part, BaseException):
            raise part
        merged.merge(part)
    return merged


# --------------------------------------------------------------------------------------------
# Load in-process


async def _service_client(
    service: DetectionService[Any], data: bytes, window: Window, samples: Samples
) -> None:
    from facedet_server.errors import DetectError
    from facedet_server.image.inputs import EncodedImage

    while (started := time.perf_counter()) < window.end:
        try:
            detection = await service.detect(EncodedImage(data))
        except DetectError as exc:
            if window.counts(time.perf_counter()):
                samples.errors[exc.code.value] += 1
            await asyncio.sleep(OTHER_ERROR_WAIT_S)
            continue
        finished = time.perf_counter()
        if window.counts(finished):
            samples.add(finished - started, detection.timing)


async def in_process_load(
    service: DetectionService[Any], data: bytes, load: Load, live: MutableSequence[float] | None = None
) -> Samples:
    """The same number of requests in flight as through gRPC (a stream's window counts as that
    many clients: in-process there is no stream, only the pipeline). `live`: the progress slot."""
    window = Window.after_warmup(load)
    samples = Samples()
    clients = [_service_client(service, data, window, samples) for _ in range(load.in_flight)]
    async with _published(None if live is None else Slot(live, 0), window, samples):
        await asyncio.gather(_measure_cpu(window, samples, "process", None, True), *clients)
    samples.finish(window)
    return samples


@contextlib.asynccontextmanager
async def started_service(config: server_config.ServerConfig) -> Any:
    """The server's DetectionService, built and warmed up as `facedet serve` does."""
    from facedet_server.app.server import build_pipeline, build_service, resolve_for_model
    from facedet_server.model.files import resolve_model

    model_path = await asyncio.to_thread(resolve_model, config.model)
    config = resolve_for_model(config, model_path)
    service = build_service(config, await asyncio.to_thread(build_pipeline, config, model_path))
    await asyncio.to_thread(service.warm_up)
    service.start()
    try:
        yield service
    finally:
        await service.close(drain=True)


# --------------------------------------------------------------------------------------------
# A server of our own, for --compare without --server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_argv(config: server_config.ServerConfig, listen: str) -> list[str]:
    """`facedet serve` flags reproducing `config` (so both sides of a comparison match)."""
    argv = [sys.executable, "-m", "facedet.cli", "serve", "--listen", listen]
    for setting in server_config.SETTINGS:
        value = getattr(config, setting.name)
        if setting.name == "listen" or value is None:
            continue
        if setting.repeatable:  # one flag per item; none for an empty list
            for item in value:
                argv += [setting.flag, str(item)]
        else:
            argv += [setting.flag, str(value)]
    return argv


@contextlib.contextmanager
def spawned_server(config: server_config.ServerConfig, timeout: float = 120.0) -> Iterator[tuple[str, int]]:
    """A `facedet serve` subprocess on a free loopback port, with `config`'s settings as flags:
    yields (target, pid)."""
    config = replace(config, log_level="warning", summary_interval=0.0, log_format="json")
    with spawned(lambda target: serve_argv(config, target), timeout) as started:
        yield started


@contextlib.contextmanager
def spawned(argv_for: Callable[[str], list[str]], timeout: float = 120.0) -> Iterator[tuple[str, int]]:
    """The server `argv_for(target)` starts, on a free loopback port, once it is SERVING:
    yields (target, pid); terminated on exit."""
    target = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(argv_for(target), stdout=log, stderr=subprocess.STDOUT)
        try:
            with FaceDetectorClient(target) as client:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        client.wait_until_serving(min(1.0, max(deadline - time.monotonic(), 0.1)))
                        break
                    except FaceDetectorError as exc:
                        # A server that exited (a bad flag) fails now, not after the timeout.
                        if process.poll() is None and time.monotonic() < deadline:
                            continue
                        log.seek(0)
                        raise RuntimeError(
                            f"the server did not start ({exc}); its log:\n{log.read()}"
                        ) from None
            yield target, process.pid
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --------------------------------------------------------------------------------------------
# Reports


@dataclass
class Report:
    mode: str  # "in-process", "grpc" or "grpc-stream"
    concurrency: int
    window: int
    processes: int
    duration_s: float
    requests: int
    errors: dict[str, int]
    img_per_s: float
    latency_ms: dict[str, float]  # p50, p90, p99, max, mean
    server_ms: dict[str, float]  # mean per stage, from the responses' Timing; batch_size a count
    cpu_ms_per_img: dict[str, float]  # CPU time per counted image: client/server or process
    # Busy share of all CPUs during the run, and the part of it not ours (other people's load);
    # None where unknown (not Linux, or a --server whose process we cannot see).
    machine_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    # Open loop: the rate offered, and how many requests waited for the in-flight cap (which
    # means the rate was not held).
    offered_img_per_s: float | None = None
    delayed_by_in_flight_cap: int = 0
    ended_early: str = ""  # why the run stopped before its duration (then duration_s is less)

    @classmethod
    def of(cls, mode: str, load: Load, processes: int, samples: Samples) -> Report:
        n = len(samples.latencies_s)
        lat = np.asarray(samples.latencies_s or [math.nan]) * 1000
        latency = {
            "p50": float(np.percentile(lat, 50)),
            "p90": float(np.percentile(lat, 90)),
            "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max()),
            "mean": float(lat.mean()),
        }
        server = {
            name.removesuffix("_us"): samples.timing_sums[name]
            / max(n, 1)
            / (1 if name == "batch_size" else 1000)
            for name in TIMING_FIELDS
        }
        cpu = dict(samples.cpu_s)
        duration = load.duration if samples.measured_s is None else samples.measured_s
        capacity = (os.cpu_count() or 1) * duration
        busy = cpu.pop("machine", None)
        ours_known = "process" in cpu or "server" in cpu
        return cls(
            mode=mode,
            concurrency=load.concurrency,
            window=load.window if load.stream else 1,
            processes=processes,
            duration_s=round(duration, 3),
            requests=n,
            errors=dict(samples.errors),
            img_per_s=n / duration if duration > 0 else 0.0,
            latency_ms={k: round(v, 3) for k, v in latency.items()},
            server_ms={k: round(v, 3) for k, v in server.items()},
            cpu_ms_per_img={k: round(v * 1000 / max(n, 1), 3) for k, v in sorted(cpu.items())},
            machine_cpu_pct=None if busy is None or capacity <= 0 else round(100 * busy / capacity, 1),
            other_cpu_pct=(
                round(100 * max(busy - sum(cpu.values()), 0) / capacity, 1)
                if busy is not None and ours_known and capacity > 0
                else None
            ),
            offered_img_per_s=load.rate or None,
            delayed_by_in_flight_cap=samples.delayed,
            ended_early=samples.ended_early,
        )

    def lines(self) -> list[str]:
        streams = f", window {self.window}" if self.mode == "grpc-stream" else ""
        lat, srv = self.latency_ms, self.server_ms
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        cpu = "  ".join(f"{k} {v:.2f}" for k, v in self.cpu_ms_per_img.items())
        lines = [
            f"{self.mode}: concurrency {self.concurrency}{streams}, {self.processes} client process"
            f"{'es' if self.processes != 1 else ''}, {self.duration_s:g} s",
            f"  {self.img_per_s:.1f} img/s  ({self.requests} images, errors: {errors})",
            f"  latency ms   p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
            f"max {lat['max']:.2f}  mean {lat['mean']:.2f}",
            f"  server ms    decode {srv['decode']:.2f}  queue {srv['queue']:.2f}  inference "
            f"{srv['inference']:.2f}  postprocess {srv['postprocess']:.2f}  total {srv['total']:.2f}  "
            f"(mean batch {srv['batch_size']:.2f})",
            f"  outside the server's total (transport, client): {lat['mean'] - srv['total']:.2f} ms mean",
            f"  CPU ms/img   {cpu}",
        ]
        if self.delayed_by_in_flight_cap:
            lines.insert(
                2,
                f"  offered {self.offered_img_per_s:g} img/s, achieved {self.img_per_s:.1f}; "
                f"{self.delayed_by_in_flight_cap} requests were delayed by the in-flight cap "
                f"({self.concurrency}; raise it with --concurrency)",
            )
        if self.ended_early:
            lines.insert(1, f"  ended early, after {self.duration_s:g} s: {self.ended_early}")
        if self.machine_cpu_pct is not None:
            others = (
                "" if self.other_cpu_pct is None else f", of which other processes {self.other_cpu_pct:.0f}%"
            )
            lines.append(f"  machine CPU  {self.machine_cpu_pct:.0f}% busy{others}")
        return lines


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model}


def comparison(in_process: Sequence[Report], through_grpc: Sequence[Report]) -> list[dict[str, float]]:
    """One row per concurrency: medians over its repeats, pairing each in-process run with the
    gRPC run right after it (so the ratio of a pair compares like with like)."""
    pairs: dict[int, list[tuple[Report, Report]]] = {}
    for local, remote in zip(in_process, through_grpc, strict=True):
        pairs.setdefault(local.concurrency, []).append((local, remote))
    rows = []
    for concurrency, runs in pairs.items():
        ratios = [rem.img_per_s / loc.img_per_s if loc.img_per_s else math.nan for loc, rem in runs]
        rows.append(
            {
                "concurrency": concurrency,
                "runs": len(runs),
                "in_process_img_per_s": round(_median(loc.img_per_s for loc, _ in runs), 2),
                "grpc_img_per_s": round(_median(rem.img_per_s for _, rem in runs), 2),
                "ratio": round(_median(ratios), 3),
                "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3),
                "in_process_p50_ms": round(_median(loc.latency_ms["p50"] for loc, _ in runs), 2),
                "grpc_p50_ms": round(_median(rem.latency_ms["p50"] for _, rem in runs), 2),
                "p50_delta_ms": round(
                    _median(rem.latency_ms["p50"] - loc.latency_ms["p50"] for loc, rem in runs), 2
                ),
                # Per-request time outside the server's own `total`: the transport's share of the
                # latency, measured on the same requests, so the machine's noise largely cancels.
                "grpc_outside_ms": round(
                    _median(rem.latency_ms["mean"] - rem.server_ms["total"] for _, rem in runs), 2
                ),
                "other_cpu_pct_max": max(
                    (x.other_cpu_pct for pair in runs for x in pair if x.other_cpu_pct is not None),
                    default=math.nan,
                ),
            }
        )
    return rows


def _median(values: Iterable[float]) -> float:
    return float(np.median(list(values)))


def comparison_lines(rows: Sequence[dict[str, float]]) -> list[str]:
    lines = [
        "| concurrency | in-process img/s | gRPC img/s | ratio (min–max) | in-process p50 ms | gRPC p50 ms "
        "| Δp50 ms | gRPC latency − server total, mean ms | others' CPU (max) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        spread = f" ({r['ratio_min']:.3f}–{r['ratio_max']:.3f})" if r["runs"] > 1 else ""
        lines.append(
            f"| {r['concurrency']} | {r['in_process_img_per_s']:.1f} | {r['grpc_img_per_s']:.1f} | "
            f"{r['ratio']:.3f}{spread} | {r['in_process_p50_ms']:.2f} | {r['grpc_p50_ms']:.2f} | "
            f"{r['p50_delta_ms']:+.2f} | {r['grpc_outside_ms']:.2f} | {r['other_cpu_pct_max']:.0f}% |"
        )
    runs = {int(r["runs"]) for r in rows}
    lines.append(f"medians of {'/'.join(map(str, sorted(runs)))} interleaved run(s) per concurrency")
    by_c = {int(r["concurrency"]): r for r in rows}
    if 16 in by_c:
        ok = by_c[16]["ratio"] >= 0.85
        lines.append(
            f"goal ratio >= 0.85 at concurrency 16: {by_c[16]['ratio']:.3f} {'met' if ok else 'NOT met'}"
        )
    if 1 in by_c:
        ok = by_c[1]["p50_delta_ms"] <= 2.0
        lines.append(
            f"goal single-client p50 within 2 ms of in-process: {by_c[1]['p50_delta_ms']:+.2f} ms "
            f"{'met' if ok else 'NOT met'}"
        )
    return lines


# --------------------------------------------------------------------------------------------
# The command


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "bench",
        help="closed-loop load test, through gRPC or in-process",
        description="Closed-loop benchmark: N clients each send the next request as soon as the last "
        "is answered, for a warm-up and then --duration seconds. Prints img/s, latency p50/p90/p99/"
        "max and the server's mean per-stage time. --in-process runs the server's pipeline without "
        "gRPC; --compare runs both (starting a server unless --server is given) and prints the ratio. "
        "Exits 1 when any request failed; a server unreachable for "
        f"{GIVE_UP_S:g} s ends the run early. On a terminal, stderr shows the run's progress.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--in-process", action="store_true", help="call the pipeline directly, no gRPC")
    mode.add_argument("--compare", action="store_true", help="in-process, then through gRPC; print the ratio")
    parser.add_argument(
        "--server",
        metavar="ADDR",
        help="server to load (HOST:PORT, unix:///path, or a list of front ends to spread calls over "
        "with round_robin: ipv4:HOST:PORT,HOST:PORT or unix:/a.sock,/b.sock; one HOST:PORT of a "
        "server that publishes its front ends' own addresses in GetModelInfo is spread over "
        "those, as facedet.client does); "
        "default $FACEDET_SERVER or localhost:50051, "
        "except with --compare, which starts its own when this is not given",
    )
    parser.add_argument("--image", required=True, help="JPEG or PNG sent with every request")
    parser.add_argument(
        "--concurrency",
        type=_int_list,
        metavar="N[,N...]",
        help="clients (streams with --stream; default 1), or with --rate the most requests in flight "
        f"(default max({CLIENTS_PER_PROCESS}, R x {OPEN_LOOP_LATENCY_S:g} s)); "
        "several values run one after another",
    )
    parser.add_argument("--duration", type=float, default=10.0, metavar="S", help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, metavar="S", help="unmeasured seconds before")
    parser.add_argument("--stream", action="store_true", help="use StreamDetectFaces: one stream per client")
    parser.add_argument("--window", type=int, default=1, metavar="W", help="frames in flight per stream")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="R",
        help="open loop: offer R unary requests per second in total, on a fixed schedule, with at most "
        "--concurrency in flight; latency counts from each request's scheduled time",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        metavar="P",
        help=f"client processes through gRPC (0 = one per {CLIENTS_PER_PROCESS} requests in flight)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="R",
        help="with --compare: run each pair R times, interleaved, and report medians (for shared machines)",
    )
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        metavar="PCT",
        help="with --compare: re-run a pair during which other processes used more than PCT%% of the "
        f"machine's CPU (up to {QUIET_ATTEMPTS}x --repeat pairs in all; Linux)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--model",
        help="model for --in-process and for the server --compare starts (default: as `facedet serve`)",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a `facedet serve` setting for --in-process and for the server --compare starts, e.g. "
        "--set max_batch=4 (repeatable; FACEDET_* variables apply as for serve)",
    )
    parser.set_defaults(func=run)


def server_settings(model: str | None, assignments: Sequence[str]) -> server_config.ServerConfig:
    """The ServerConfig `facedet serve --model MODEL --NAME VALUE...` would run with. Taken as
    NAME=VALUE pairs rather than as serve's own flags, so no server setting can collide with a
    bench flag (both have a --processes)."""
    settings = {s.name: s for s in server_config.SETTINGS}
    argv = ["--model", model] if model else []
    for assignment in assignments:
        name, equals, value = assignment.partition("=")
        name = name.strip().replace("-", "_")
        if not equals or name not in settings:
            raise ValueError(f"--set {assignment!r}: expected NAME=VALUE, NAME one of {', '.join(settings)}")
        argv += [settings[name].flag, value]
    parser = argparse.ArgumentParser(prog="facedet bench --set", exit_on_error=False)
    server_config.add_arguments(parser)
    try:
        return server_config.from_args(parser.parse_args(argv))
    except argparse.ArgumentError as exc:
        raise ValueError(str(exc)) from None


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,..., got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"concurrency must be >= 1, got {text!r}")
    return values


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed, as `facedet serve` does, so both sides use the same loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run(args: argparse.Namespace) -> int:
    from facedet_server.app.logs import configure_logging

    if args.duration <= 0 or args.warmup < 0 or args.window < 1 or args.processes < 0 or args.repeat < 1:
        print(
            "facedet bench: needs --duration > 0, --warmup >= 0, --window >= 1, --processes >= 0, "
            "--repeat >= 1",
            file=sys.stderr,
        )
        return 2
    try:
        data = Path(args.image).read_bytes()
        config = server_settings(args.model, args.settings)
    except (OSError, ValueError) as exc:
        print(f"facedet bench: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, "warning")
    if args.rate and (args.stream or args.in_process or args.compare):
        print(
            "facedet bench: --rate is for unary calls through gRPC (not --stream/--in-process/--compare)",
            file=sys.stderr,
        )
        return 2
    concurrencies = args.concurrency or [open_loop_in_flight(args.rate) if args.rate else 1]
    loads = [Load(c, args.warmup, args.duration, args.stream, args.window, args.rate) for c in concurrencies]
    shown = progress.stream_for_progress()
    try:
        if args.in_process:
            reports = run_loop(_in_process(config, data, loads, shown))
            _print({"machine": machine(), "runs": reports}, reports, args.json)
            return verdict(reports)
        if args.compare and not args.server:
            with spawned_server(config) as (target, pid):
                return _compare(args, config, data, loads, target, pid, shown)
        target = check_server(args.server or os.environ.get("FACEDET_SERVER", "localhost:50051"))
        if args.compare:
            return _compare(args, config, data, loads, target, None, shown)
        reports = run_loop(_through_grpc(target, data, loads, args.processes, None, shown))
        _print({"machine": machine(), "server": target, "runs": reports}, reports, args.json)
        return verdict(reports)
    except (RuntimeError, FaceDetectorError, grpc.RpcError, TimeoutError, ModelFileError) as exc:
        print(f"facedet bench: {exc}", file=sys.stderr)
        return 1


def _compare(
    args: argparse.Namespace,
    config: server_config.ServerConfig,
    data: bytes,
    loads: Sequence[Load],
    target: str,
    pid: int | None,
    shown: TextIO | None,
) -> int:
    local, remote, discarded = run_loop(
        _interleaved_pairs(
            config, data, loads, target, pid, args.processes, args.repeat, args.max_other_cpu, shown
        )
    )
    rows = comparison(local, remote)
    result = {
        "machine": machine(),
        "server": target,
        "in_process": local,
        "grpc": remote,
        "comparison": rows,
        "discarded_as_noisy": discarded,
    }
    in_run_order = [report for pair in zip(local, remote, strict=True) for report in pair]
    _print(result, in_run_order, args.json)
    if not args.json:
        if discarded:
            print(
                f"({len(discarded) // 2} pair(s) re-run: other processes used over "
                f"{args.max_other_cpu}% of the CPU)"
            )
        print("\n".join(["", *comparison_lines(rows)]))
    return verdict(in_run_order)


async def _interleaved_pairs(
    config: server_config.ServerConfig,
    data: bytes,
    loads: Sequence[Load],
    target: str,
    pid: int | None,
    processes: int,
    repeat: int,
    max_other_cpu: float | None,
    shown: TextIO | None = None,
) -> tuple[list[Report], list[Report], list[Report]]:
    """`repeat` (in-process, gRPC) pairs per load, back to back so a drift in the machine's speed
    hits both sides alike; pairs disturbed by other processes are re-run while attempts remain.
    Stops after a gRPC run that ended early (the server went away).
    Returns the in-process reports, the gRPC reports and the discarded ones."""
    local: list[Report] = []
    remote: list[Report] = []
    discarded: list[Report] = []
    async with started_service(config) as service:
        for load in loads:
            kept = 0
            attempts = repeat * QUIET_ATTEMPTS
            for attempt in range(attempts):
                pair = [
                    *await _in_process_with(service, data, [load], shown),
                    *await _through_grpc(target, data, [load], processes, pid, shown),
                ]
                if pair[1].ended_early:
                    local.append(pair[0])
                    remote.append(pair[1])
                    return local, remote, discarded
                last_chance = repeat - kept >= attempts - attempt
                if _noisy(pair, max_other_cpu) and not last_chance:
                    discarded += pair
                    continue
                local.append(pair[0])
                remote.append(pair[1])
                kept += 1
                if kept == repeat:
                    break
    return local, remote, discarded


def _noisy(pair: Sequence[Report], max_other_cpu: float | None) -> bool:
    """Whether other processes took more than `max_other_cpu` % of the machine during either run
    (unknown counts as quiet: a --server we did not start is not ours to account for)."""
    if max_other_cpu is None:
        return False
    return any(r.other_cpu_pct is not None and r.other_cpu_pct > max_other_cpu for r in pair)


async def _in_process(
    config: server_config.ServerConfig, data: bytes, loads: Sequence[Load], shown: TextIO | None
) -> list[Report]:
    async with started_service(config) as service:
        return await _in_process_with(service, data, loads, shown)


async def _in_process_with(
    service: DetectionService[Any], data: bytes, loads: Sequence[Load], shown: TextIO | None = None
) -> list[Report]:
    reports = []
    for load in loads:
        samples = await _watched(
            shown,
            f"in-process {load.label}",
            load,
            1,
            functools.partial(in_process_load, service, data, load),
        )
        reports.append(Report.of("in-process", load, 0, samples))
    return reports


async def _watched(
    shown: TextIO | None,
    label: str,
    load: Load,
    generators: int,
    run: Callable[[MutableSequence[float] | None], Awaitable[Samples]],
) -> Samples:
    """`run(live)`, with the progress line on `shown` fed from `live` (no line when None)."""
    if shown is None:
        return await run(None)
    live = progress.shared_values(generators)
    line = asyncio.create_task(progress.show(shown, label, load.duration, live))
    try:
        return await run(live)
    finally:
        line.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await line


def check_server(target: str) -> str:
    """Fail at once, with gRPC's reason, when nothing answers at `target`; wait while it loads.
    Returns the target to load: for one address of a server with several front ends, the list
    of the front ends it publishes in GetModelInfo (round_robin over them, as our client does:
    facedet.client.discovery), else `target` itself."""
    with FaceDetectorClient(target, discover_front_ends=False) as client:
        if client.health(timeout=10) != "SERVING":
            client.wait_until_serving(120)
        published = client.model_info().front_end_addresses
    front_ends = dialable(published, with_default_port(target))
    return list_target(front_ends) if len(front_ends) > 1 else target


async def _through_grpc(
    target: str,
    data: bytes,
    loads: Sequence[Load],
    processes: int,
    pid: int | None,
    shown: TextIO | None = None,
) -> list[Report]:
    """One report per load; after one that ended early (the server went away) the rest are not run."""
    request = pb.DetectFacesRequest(encoded=data).SerializeToString()
    reports = []
    for load in loads:
        count = processes or math.ceil(load.in_flight / CLIENTS_PER_PROCESS)
        count = len(split(load.concurrency, count))
        mode = "grpc-stream" if load.stream else "grpc"
        samples = await _watched(
            shown,
            f"{mode} {load.label}",
            load,
            count,
            functools.partial(grpc_run, target, request, load, count, pid),
        )
        reports.append(Report.of(mode, load, count, samples))
        if samples.ended_early:
            break
    return reports


def _print(result: dict[str, Any], reports: Sequence[Report], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=asdict, indent=2))
    else:
        info = result["machine"]
        print(f"machine: {info['cpus']} CPUs, {info['cpu_model']}")
        for report in reports:
            print("\n".join(report.lines()))


def verdict(reports: Sequence[Report]) -> int:
    """The exit status, and on stderr why it is not 0: a run that ended early, and last the
    requests that failed, by status."""
    for report in reports:
        if report.ended_early:
            print(
                f"facedet bench: {report.mode} concurrency {report.concurrency} ended early, after "
                f"{report.duration_s:g} s: {report.ended_early}",
                file=sys.stderr,
            )
    failed: Counter[str] = Counter()
    for report in reports:
        failed.update(report.errors)
    if failed:
        by_status = ", ".join(f"{name} {count}" for name, count in sorted(failed.items()))
        print(f"facedet bench: {sum(failed.values())} requests failed: {by_status}", file=sys.stderr)
        return 1
    if any(report.requests == 0 for report in reports):
        print("facedet bench: a run completed no requests; see the errors above", file=sys.stderr)
        return 1
    return 1 if any(report.ended_early for report in reports) else 0
