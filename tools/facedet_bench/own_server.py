"""A `facedet serve` subprocess for a command that measures a server it starts itself (its pid
known, so its memory can be read from /proc), on a free loopback port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mib(pid: int) -> float:
    """VmHWM from /proc (since start, or since `reset_peak_rss`)."""
    return _status_mib(pid, "VmHWM:")


def rss_mib(pid: int) -> float:
    return _status_mib(pid, "VmRSS:")


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (a multi-process server's front ends and engines are
    the supervisor's children), from each process's parent in /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The name (field 2) is in parentheses and may hold spaces: the parent follows it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def total_rss_mib(pids: list[int]) -> float:
    """The resident memory of `pids` together (shared pages counted in each)."""
    total = 0.0
    for member in pids:
        try:
            total += rss_mib(member)
        except (OSError, RuntimeError):
            continue  # exited meanwhile, or a zombie without VmRSS
    return total


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def serving(target: str, timeout: float = 2.0) -> bool:
    try:
        with grpc.insecure_channel(target) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
    except grpc.RpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


class OwnServer:
    """`facedet serve --model MODEL --listen 127.0.0.1:PORT ARGS`, its log in `log_path`."""

    def __init__(
        self,
        model: str,
        args: Sequence[str] = (),
        log_path: Path | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self.port = free_port()
        self.start_timeout = start_timeout  # a first GPU start compiles for minutes
        self.target = f"127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "facedet.cli",
            "serve",
            "--model",
            model,
            "--listen",
            self.target,
            *args,
        ]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> OwnServer:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {' '.join(self.command)}")
            if serving(self.target, 1.0):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"the server did not report SERVING within {self.start_timeout} s")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> OwnServer:
        return self.start() if self.proc is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
