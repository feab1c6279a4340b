"""A soak: mixed unary and streaming load with a share of bad frames, for minutes, then a report.

    python -m facedet_bench.soak --duration 600 --model ../shared/models/yolov5n-0.5.onnx
    python -m facedet_bench.soak --duration 600 --server HOST:PORT [--server-pid PID]

Unary workers call DetectFaces back to back; stream workers each keep one StreamDetectFaces
open with a few frames in flight. `--bad-fraction` of all requests (1% by default) carry bytes
that are no image, and must fail with INVALID_ARGUMENT; every other request must succeed. The
report: requests served, errors by status (bad and good apart), p99 latency in the first and the
last window (a minute, or a quarter of a shorter run), the server's RSS after the first window
and at the end (its growth must stay under --max-rss-growth, checked on runs of 2 minutes or
more: a shorter run is all warm-up), and with --gpu the GPU memory the server holds
(nvidia-smi; its growth over the second half must stay under --max-gpu-growth). Memory is the
server's whole process tree: with --processes, its front ends and engines are the server's
children. The server is started here with --model (its pid known), or given with --server
(RSS read only with --server-pid, on the same host). A burst of --warm-up seconds comes first,
not counted, so the memory baseline is taken after the runtime has seen every batch size.
Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc

from facedet_bench.own_server import OwnServer, process_tree, total_rss_mib

BAD_IMAGE = b"\x00 not an image"
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


@dataclass
class Record:
    """What every request ended with, by kind; appended from the worker threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    times: list[float] = field(default_factory=list)  # seconds since the start, at the answer
    latencies: list[float] = field(default_factory=list)
    good: Counter[str] = field(default_factory=Counter)  # status name -> count
    bad: Counter[str] = field(default_factory=Counter)
    wrong_faces: int = 0  # good answers with another face count than the first one gave

    def add(self, started: float, latency: float, bad: bool, code: str) -> None:
        with self.lock:
            (self.bad if bad else self.good)[code] += 1
            if code == "OK":
                self.times.append(started + latency)
                self.latencies.append(latency)


class Soak:
    def __init__(
        self, target: str, image: bytes, bad_fraction: float, deadline: float, seed: int = 0
    ) -> None:
        self.target = target
        self.image = image
        self.bad_fraction = bad_fraction
        self.deadline = deadline
        self.record = Record()
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self.faces: int | None = None

    def _is_bad(self) -> bool:
        with self._rng_lock:
            return bool(self._rng.random() < self.bad_fraction)

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    def _check_faces(self, count: int) -> None:
        with self.record.lock:
            if self.faces is None:
                self.faces = count
            elif count != self.faces:
                self.record.wrong_faces += 1

    def unary(self) -> None:
        with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.FaceDetectorStub(channel)
            while not self.stop.is_set():
                bad = self._is_bad()
                request = pb.DetectFacesRequest(encoded=BAD_IMAGE if bad else self.image)
                started = self._now()
                try:
                    response = stub.DetectFaces(request, timeout=self.deadline)
                    code = "OK"
                    if not bad:
                        self._check_faces(len(response.faces))
                except grpc.RpcError as exc:
                    code = exc.code().name  # type: ignore[attr-defined]
                self.record.add(started, self._now() - started, bad, code)

    def stream(self, window: int) -> None:
        """One stream for the whole run (reopened should it end), `window` frames in flight."""
        with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.FaceDetectorStub(channel)
            while not self.stop.is_set():
                self._one_stream(stub, window)

    def _one_stream(self, stub: pb_grpc.FaceDetectorStub, window: int) -> None:
        slots = threading.Semaphore(window)
        sent: deque[tuple[float, bool]] = deque()  # (sent at, bad) of the frames not yet answered

        def requests() -> Iterator[pb.DetectFacesRequest]:
            frame = 0
            while not self.stop.is_set():
                if not slots.acquire(timeout=0.5):
                    continue
                bad = self._is_bad()
                sent.append((self._now(), bad))
                yield pb.DetectFacesRequest(encoded=BAD_IMAGE if bad else self.image, frame_id=frame)
                frame += 1

        try:
            for response in stub.StreamDetectFaces(requests()):
                started, bad = sent.popleft()
                code = grpc.StatusCode.OK.name
                if response.HasField("error"):
                    code = _CODE_NAMES.get(response.error.code, str(response.error.code))
                elif not bad:
                    self._check_faces(len(response.faces))
                self.record.add(started, self._now() - started, bad, code)
                slots.release()
        except grpc.RpcError as exc:
            # The frames in flight are lost with the stream: each counts with the stream's status.
            for started, bad in sent:
                self.record.add(started, self._now() - started, bad, exc.code().name)  # type: ignore[attr-defined]


_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


def _gpu_mib(pids: list[int]) -> float | None:
    """GPU memory the processes `pids` hold, summed (None: no nvidia-smi, or none of them on it)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split(",") for line in out.splitlines() if line.strip()]
    used = [float(m) for p, m in rows if int(p) in pids]
    return sum(used) if used else None


def _p99_ms(record: Record, start: float, end: float) -> float | None:
    times = np.asarray(record.times)
    lat = np.asarray(record.latencies)[(times >= start) & (times < end)]
    return round(float(np.percentile(lat, 99)) * 1000, 1) if lat.size else None


def warm_up(target: str, image: bytes, seconds: float, concurrency: int) -> int:
    """`concurrency` callers back to back for `seconds`, not counted: every batch size the server
    forms under load has been run once before the soak starts (ONNX Runtime's memory arena
    grows to the largest batch it has seen, a step that is no leak). Returns the calls made."""
    done = [0]
    stop = time.perf_counter() + seconds

    def caller() -> None:
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.FaceDetectorStub(channel)
            while time.perf_counter() < stop:
                try:
                    stub.DetectFaces(pb.DetectFacesRequest(encoded=image), timeout=30)
                    done[0] += 1
                except grpc.RpcError:
                    time.sleep(0.05)  # RESOURCE_EXHAUSTED under the burst: fine here

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 40)
    return done[0]


Sample = tuple[float, float | None, float | None]  # (seconds, RSS MiB, GPU MiB)


def sample_at(samples: list[Sample], t: float, column: int) -> float | None:
    """The value in `column` of the first sample at or after `t` seconds that has one."""
    for sample in samples:
        value = sample[column]
        if sample[0] >= t and value is not None:
            return value
    return None


def growth_pct(samples: list[Sample], column: int, since: float) -> float | None:
    """Percent growth of `column` from the sample at `since` seconds to the last sample."""
    first, last = sample_at(samples, since, column), samples[-1][column] if samples else None
    return None if first is None or last is None else round((last - first) / first * 100, 2)


def run(args: argparse.Namespace, target: str, pid: int | None) -> dict[str, object]:
    image = Path(args.image).read_bytes()
    warmed = warm_up(target, image, args.warm_up, args.warm_up_callers) if args.warm_up > 0 else 0
    soak = Soak(target, image, args.bad_fraction, args.deadline, args.seed)
    window = min(60.0, args.duration / 4)
    workers = [threading.Thread(target=soak.unary, daemon=True) for _ in range(args.unary)]
    workers += [
        threading.Thread(target=soak.stream, args=(args.window,), daemon=True) for _ in range(args.streams)
    ]
    for worker in workers:
        worker.start()
    samples: list[Sample] = []
    processes = len(process_tree(pid)) if pid else None

    def sample(now: float) -> None:
        pids = process_tree(pid) if pid else []
        rss = total_rss_mib(pids) if pids else None
        samples.append((now, rss, _gpu_mib(pids) if args.gpu and pids else None))

    while (now := soak._now()) < args.duration:
        sample(now)
        time.sleep(min(args.sample_interval, max(args.duration - now, 0.01)))
    soak.stop.set()
    for worker in workers:
        worker.join(args.deadline + 10)
    end = soak._now()
    sample(end)

    rec = soak.record
    good_total, bad_total = sum(rec.good.values()), sum(rec.bad.values())
    rss_growth = growth_pct(samples, 1, since=window)
    rss_checked = args.duration >= 120 and rss_growth is not None
    # The GPU's baseline is the run's midpoint, not the end of its first window: PyTorch's
    # caching allocator keeps every block it reserves, so device memory climbs for the first
    # minutes to the working set of the (batch, shape, worker) mixes the load forms and then
    # stays (11.7 -> 16.6 GB by 120 s, then flat for 480 s, on the H200); a leak keeps climbing.
    gpu_growth = growth_pct(samples, 2, since=end / 2)
    # With --gpu on a long run, no GPU sample at all fails too: nothing would have been checked.
    gpu_checked = bool(args.gpu) and args.duration >= 120 and pid is not None
    checks = {
        "good_requests_all_ok": good_total > 0 and set(rec.good) == {"OK"},
        "bad_requests_all_invalid_argument": set(rec.bad) <= {"INVALID_ARGUMENT"},
        "same_faces_every_time": rec.wrong_faces == 0,
        "rss_growth_under_limit": (rss_growth is not None and rss_growth < args.max_rss_growth)
        or not rss_checked,
        "gpu_growth_under_limit": (gpu_growth is not None and gpu_growth < args.max_gpu_growth)
        or not gpu_checked,
    }
    return {
        "target": target,
        "duration_s": round(end, 1),
        "unary_workers": args.unary,
        "streams": args.streams,
        "bad_fraction": args.bad_fraction,
        "requests": good_total + bad_total,
        "served_ok": rec.good["OK"],
        "img_per_s": round(rec.good["OK"] / end, 1),
        "good_by_status": dict(rec.good),
        "bad_by_status": dict(rec.bad),
        "faces_per_image": soak.faces,
        "window_s": window,
        "p99_ms_first_window": _p99_ms(rec, 0, window),
        "p99_ms_last_window": _p99_ms(rec, end - window, end + 1),
        "server_processes": processes,
        "rss_mib_start": samples[0][1],
        "rss_mib_after_first_window": sample_at(samples, window, 1),
        "rss_mib_end": samples[-1][1],
        "rss_growth_pct_after_first_window": rss_growth,
        "rss_checked": rss_checked,
        "gpu_mib_after_first_window": sample_at(samples, window, 2),
        "gpu_mib_at_half": sample_at(samples, end / 2, 2),
        "gpu_mib_end": samples[-1][2],
        "gpu_growth_pct_after_first_window": growth_pct(samples, 2, since=window),
        "gpu_growth_pct_second_half": gpu_growth,
        "gpu_checked": gpu_checked,
        "warm_up_calls": warmed,
        "samples": [[round(t, 1), rss, gpu] for t, rss, gpu in samples],  # seconds, RSS MiB, GPU MiB
        "checks": checks,
        "passed": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facedet_bench.soak", description=__doc__.split("\n\n")[0]
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="start a server here with this model (its RSS is then measured)")
    where.add_argument("--server", help="soak a running server at HOST:PORT")
    parser.add_argument("--server-pid", type=int, help="with --server on this host: its pid, for its RSS")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra flag for a server started here"
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--unary", type=int, default=2, help="unary workers (default 2)")
    parser.add_argument("--streams", type=int, default=2, help="streams (default 2)")
    parser.add_argument("--window", type=int, default=4, help="frames in flight per stream (default 4)")
    parser.add_argument(
        "--bad-fraction", type=float, default=0.01, help="share of bad requests (default 0.01)"
    )
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds each unary call may take")
    parser.add_argument("--image", default=str(_default_image()), help="the good image (default zidane.jpg)")
    parser.add_argument("--max-rss-growth", type=float, default=5.0, help="percent, after the first window")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--gpu", action="store_true", help="also sample GPU memory (nvidia-smi)")
    parser.add_argument(
        "--max-gpu-growth", type=float, default=5.0, help="percent, over the second half of the run"
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=120.0,
        help="seconds the server started here may take to serve (a first GPU start compiles: 600)",
    )
    parser.add_argument(
        "--warm-up",
        type=float,
        default=20.0,
        help="seconds of a burst before the soak, not counted (default 20)",
    )
    parser.add_argument(
        "--warm-up-callers", type=int, default=24, help="callers in the warm-up burst (default 24)"
    )
    parser.add_argument("--server-log", type=Path, help="with --model: the server's log, appended here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.model:
        with OwnServer(
            args.model, args.server_arg, log_path=args.server_log, start_timeout=args.start_timeout
        ) as server:
            report = run(args, server.target, server.pid)
            report["server_exit"] = server.stop()
    else:
        report = run(args, args.server, args.server_pid)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if report["passed"] else 1


def _default_image() -> Path:
    """zidane.jpg of the shared data folder: $FACEDET_SHARED, else `../shared` beside the checkout."""
    shared = os.environ.get("FACEDET_SHARED") or Path(__file__).resolve().parents[2].parent / "shared"
    return Path(shared) / "images" / "zidane.jpg"


if __name__ == "__main__":
    sys.exit(main())
