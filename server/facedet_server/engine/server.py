"""The engine process's side: owns the pipeline (model, GPU decode, NMS), listens on a unix
socket, and runs batches from every connected front end on its inference threads.

Each inference thread takes what is queued, up to `max_batch` images, from any number of front
ends at once: front ends batch within themselves (their own `Batcher`), the engine merges those
batches into the large ones a GPU needs. One process means one CUDA context: nothing is
time-sliced between processes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from facedet_server.engine import codec
from facedet_server.engine.protocol import BatchFailed, Hello, Message, RunBatch
from facedet_server.engine.wire import ConnectionClosed, recv_message, send_message
from facedet_server.pipeline.base import Pipeline

log = structlog.get_logger("facedet.engine")


@dataclass
class _Connection:
    sock: socket.socket
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: Message, buffers: Sequence[memoryview] = ()) -> None:
        try:
            with self.send_lock:
                send_message(self.sock, message, buffers)
        except OSError:
            pass  # the front end went away; its reader thread notices and closes the socket


@dataclass
class _Job:
    connection: _Connection
    items: list[Any]
    received: float


class _JobQueue:
    """Jobs in arrival order; `take` hands a thread every job that fits in one batch."""

    def __init__(self) -> None:
        self._jobs: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def put(self, job: _Job) -> None:
        with self._ready:
            self._jobs.append(job)
            self._ready.notify()

    def take(self, max_items: int) -> list[_Job] | None:
        """The first job (whatever its size), then the next ones while they fit; None once
        closed and empty."""
        with self._ready:
            while not self._jobs:
                if self._closed:
                    return None
                self._ready.wait()
            taken = [self._jobs.popleft()]
            count = len(taken[0].items)
            while self._jobs and count + len(self._jobs[0].items) <= max_items:
                job = self._jobs.popleft()
                count += len(job.items)
                taken.append(job)
            return taken

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


@dataclass
class EngineStats:
    batches: int = 0
    images: int = 0
    jobs: int = 0
    started: float = field(default_factory=time.perf_counter)

    def summary(self) -> dict[str, object]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return {
            "batches": self.batches,
            "images": self.images,
            "img_per_s": round(self.images / elapsed, 1),
            "mean_batch": round(self.images / max(self.batches, 1), 1),
            "front_end_batches_per_batch": round(self.jobs / max(self.batches, 1), 2),
        }


class EngineServer:
    def __init__(self, pipeline: Pipeline[Any], socket_path: Path, workers: int, max_batch: int) -> None:
        self.pipeline = pipeline
        self.socket_path = socket_path
        self.workers = workers
        self.max_batch = max_batch
        backend = pipeline.backend
        self.info = codec.engine_info(
            pipeline.preparer,
            pipeline.spec,
            pipeline.limits,
            backend=backend.name,
            device=backend.device,
            model_sha256=backend.model_sha256,
            max_batch=max_batch,
            pid=os.getpid(),
        )
        self._jobs = _JobQueue()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stats = EngineStats()
        self._warm_up_errors: list[Exception] = []

    def start(self) -> None:
        """Warm up every inference thread (each has its own CUDA stream and graphs), then open
        the socket: a front end that connects finds an engine ready to run."""
        warm = threading.Barrier(self.workers + 1)
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, args=(warm,), name=f"engine-infer-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        warm.wait()
        if self._warm_up_errors:
            self._jobs.close()
            raise self._warm_up_errors[0]
        self._listener = listen(self.socket_path)
        accept = threading.Thread(
            target=self._accept, args=(self._listener,), name="engine-accept", daemon=True
        )
        accept.start()

    def take_stats(self) -> EngineStats:
        with self._lock:
            stats, self._stats = self._stats, EngineStats()
        return stats

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # closed by close()
            with self._lock:
                self._connections.add(sock)
            threading.Thread(target=self._read, args=(sock,), name="engine-conn", daemon=True).start()

    def _read(self, sock: socket.socket) -> None:
        connection = _Connection(sock)
        try:
            while True:
                message, buffers = recv_message(sock)
                if isinstance(message, RunBatch):
                    items = codec.batch_items(message, buffers)
                    self._jobs.put(_Job(connection, items, time.perf_counter()))
                elif isinstance(message, Hello):
                    connection.send(self.info)
                else:
                    raise ConnectionError(f"unexpected message {type(message).__name__}")
        except ConnectionClosed:
            pass
        except Exception as exc:  # a broken or foreign client (a MalformedFrame): drop it, serve the rest
            log.warning("engine_connection_dropped", error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._connections.discard(sock)
            sock.close()

    def _work(self, warm: threading.Barrier) -> None:
        try:
            self.pipeline.warm_up()
        except Exception as exc:
            self._warm_up_errors.append(exc)
            return
        finally:
            warm.wait()
        while (jobs := self._jobs.take(self.max_batch)) is not None:
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        items = []
        for job in jobs:
            waited_us = int((started - job.received) * 1e6)
            for item in job.items:
                item.timing.queue_us += waited_us  # front-end queue + engine queue
                items.append(item)
        try:
            results = list(self.pipeline.infer_batch(items))
            if len(results) != len(items):
                raise RuntimeError(f"batch of {len(items)} produced {len(results)} results")
        except Exception as exc:
            log.exception("engine_batch_failed", images=len(items))
            for job in jobs:
                job.connection.send(BatchFailed(f"{type(exc).__name__}: {exc}"))
            return
        with self._lock:
            self._stats.batches += 1
            self._stats.images += len(items)
            self._stats.jobs += len(jobs)
        first = 0
        for job in jobs:
            job.connection.send(*codec.batch_done(results[first : first + len(job.items)]))
            first += len(job.items)

    def drain(self, timeout: float) -> int:
        """Stop accepting front ends and keep serving the connected ones until they hang up
        (draining their own calls), at most `timeout` seconds; returns how many remain.
        Under the supervisor they are gone already; as separate containers of one pod, the
        engine and its front ends get SIGTERM together, and the front ends still need it."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        deadline = time.monotonic() + timeout
        while (remaining := self.connections) and time.monotonic() < deadline:
            time.sleep(0.05)
        return remaining

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def close(self) -> None:
        """Stop accepting, finish the queued batches, close every connection and the model."""
        self.drain(0)
        self._jobs.close()
        for thread in self._threads:
            thread.join()
        with self._lock:
            for sock in self._connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.pipeline.backend.close()


def ensure_free(path: Path) -> None:
    """Refuse a socket path a live engine listens on; remove one left by an engine that died.
    Checked before the model loads too, so a misconfigured second engine fails in a second,
    not after minutes of compiling."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: left behind by an engine that died
    else:
        raise OSError(f"another engine is already listening on {path}")
    finally:
        probe.close()


def listen(path: Path) -> socket.socket:
    """A unix socket only this user can connect to: another local user must not feed the
    engine work, read its answers or tie up its threads (see `wire`)."""
    ensure_free(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(64)
    return listener
