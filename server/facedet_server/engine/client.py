"""`EnginePipeline`: the `Pipeline` a front-end process runs when the model lives in an engine
process. Requests are checked (and, off the GPU path, decoded) here with a `Preparer` equal to
the engine's, built from the description the engine sends; each batch the front end's `Batcher`
forms goes to the engine on the calling inference thread's connection, and its results come
back in order.

An engine can die and be restarted by the supervisor at the same socket path. `watch` keeps one
idle connection open to notice the death at once (the kernel closes it) and the return (a new
connection answers Hello): the front end's health follows, and inference threads drop the
connections they held to the dead engine instead of failing one more batch on them."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facedet_server.engine import codec
from facedet_server.engine.protocol import BatchDone, BatchFailed, EngineInfo, Hello
from facedet_server.engine.wire import recv_message, send_message
from facedet_server.errors import DetectError, Unavailable
from facedet_server.faces.options import Options
from facedet_server.image.inputs import ImageInput
from facedet_server.model.spec import ModelSpec
from facedet_server.pipeline.base import Detection, Limits
from facedet_server.pipeline.gpu_prepare import GpuPreparer
from facedet_server.pipeline.host import HostPreparer


class EngineFailed(DetectError):
    """The engine ran the batch and failed (a runtime error there, not a bad image)."""


@dataclass(frozen=True)
class EngineBackend:
    """The engine's model runtime as GetModelInfo reports it; `close` closes our connections."""

    spec: ModelSpec
    name: str
    device: str
    max_batch: int
    model_sha256: str
    pipeline: EnginePipeline

    def close(self) -> None:
        self.pipeline.close()


class EnginePipeline:
    def __init__(
        self,
        socket_path: Path,
        wait_seconds: float,
        aborted: threading.Event | None = None,
        batch_timeout: float = 120.0,
    ) -> None:
        """Blocks until the engine answers (it opens its socket once warmed up), at most
        `wait_seconds`, or until `aborted` is set (SIGTERM while waiting). A batch takes
        milliseconds: an engine silent for `batch_timeout` seconds is hung (a stuck GPU), and the
        calls waiting on it fail with UNAVAILABLE rather than wait for their deadlines."""
        self.socket_path = socket_path
        self.batch_timeout = batch_timeout
        self._local = threading.local()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        # Bumped each time the engine is found dead: a thread's connection from an older
        # generation went to an engine that is gone.
        self._generation = 0
        self._closed = threading.Event()
        self._watch_socket: socket.socket | None = None
        self.serving = True
        self.info = info = self._connect(wait_seconds, aborted or threading.Event())
        self.spec: ModelSpec = codec.model_spec(info.spec)
        self.limits: Limits = codec.limits_of(info.limits)
        self.preparer: HostPreparer | GpuPreparer = codec.preparer_of(info.preparer)
        self.backend = EngineBackend(
            self.spec, info.backend, info.device, info.max_batch, info.model_sha256, self
        )

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.preparer.input_shape

    def prepare(self, image: ImageInput, options: Options) -> Any:
        return self.preparer.prepare(image, options)

    def prepare_inline(self, image: ImageInput, options: Options) -> Any | None:
        return self.preparer.prepare_inline(image, options)

    def infer_batch(self, items: Sequence[Any]) -> list[Detection | DetectError]:
        message, buffers = codec.run_batch(items)
        try:
            sock = self._thread_socket()
            send_message(sock, message, buffers)
            reply, reply_buffers = recv_message(sock)
            if isinstance(reply, BatchDone):
                return codec.batch_results(reply, reply_buffers)
        except OSError as exc:  # ConnectionError included; the next batch connects afresh
            self._drop_thread_socket()
            raise Unavailable(f"the inference engine ({self.socket_path}) is unreachable: {exc}") from None
        if isinstance(reply, BatchFailed):
            raise EngineFailed(f"inference failed in the engine process: {reply.message}")
        self._drop_thread_socket()
        raise EngineFailed(f"the engine answered a batch with {type(reply).__name__}")

    def detect(self, image: ImageInput, options: Options | None = None) -> Detection:
        start = time.perf_counter()
        (result,) = self.infer_batch([self.prepare(image, options or Options())])
        if isinstance(result, DetectError):
            raise result
        result.timing.total_us = int((time.perf_counter() - start) * 1e6)
        return result

    def warm_up(self) -> None:
        """The engine warmed the model; an inference thread only opens its connection."""
        self._thread_socket()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
            watch, self._watch_socket = self._watch_socket, None
        for sock in sockets:
            sock.close()
        if watch is not None:
            with contextlib.suppress(OSError):
                watch.shutdown(socket.SHUT_RDWR)  # wakes the watch thread's recv
            watch.close()

    def watch(self, on_change: Callable[[bool], None], retry_seconds: float = 0.2) -> threading.Thread:
        """Follow the engine from a thread of its own: `on_change(False)` when it dies,
        `on_change(True)` when an engine answers at the socket again (the supervisor restarted
        it), until `close`."""
        thread = threading.Thread(
            target=self._watch, args=(on_change, retry_seconds), name="engine-watch", daemon=True
        )
        thread.start()
        return thread

    def _watch(self, on_change: Callable[[bool], None], retry_seconds: float) -> None:
        while not self._closed.is_set():
            try:
                sock = self._open()
                sock.settimeout(None)  # idle for as long as the engine lives
                send_message(sock, Hello())
                info = recv_message(sock).message
            except OSError:  # not there (yet): restarting, loading its model
                self._set_serving(False, on_change)
                self._closed.wait(retry_seconds)
                continue
            with self._lock:
                if self._closed.is_set():
                    sock.close()
                    return
                self._watch_socket = sock
            if isinstance(info, EngineInfo):
                self.info = info
                self._set_serving(True, on_change)
            with contextlib.suppress(OSError):
                recv_message(sock)  # the engine never sends more: this returns when it dies
            with self._lock:
                self._watch_socket = None
            sock.close()
            if not self._closed.is_set():
                self._set_serving(False, on_change)

    def _set_serving(self, serving: bool, on_change: Callable[[bool], None]) -> None:
        if serving == self.serving:
            return
        if not serving:
            with self._lock:
                self._generation += 1
        self.serving = serving
        on_change(serving)

    def _connect(self, wait_seconds: float, aborted: threading.Event) -> EngineInfo:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                sock = self._open()
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"no inference engine answered at {self.socket_path} within {wait_seconds:g} s "
                        f"(last error: {exc}); start one with `facedet serve --role engine`"
                    ) from None
                if aborted.wait(0.2):
                    raise Unavailable(
                        f"stopped while waiting for the inference engine at {self.socket_path}"
                    ) from None
                continue
            try:
                send_message(sock, Hello())
                info = recv_message(sock).message
            except ConnectionError as exc:  # died mid-answer, or speaks another version of the protocol
                raise Unavailable(f"{self.socket_path} answered Hello with no EngineInfo: {exc}") from None
            finally:
                sock.close()
            if not isinstance(info, EngineInfo):
                raise Unavailable(f"{self.socket_path} answered Hello with {type(info).__name__}")
            return info

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        sock.settimeout(self.batch_timeout)  # a timeout is an OSError: the socket is dropped
        return sock

    def _thread_socket(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is not None and getattr(self._local, "generation", 0) != self._generation:
            self._drop_thread_socket()  # it went to an engine that has died since
            sock = None
        if sock is None:
            generation = self._generation
            sock = self._open()
            self._local.sock = sock
            self._local.generation = generation
            with self._lock:
                self._sockets.append(sock)
        return sock

    def _drop_thread_socket(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            with self._lock:
                if sock in self._sockets:
                    self._sockets.remove(sock)
            sock.close()
