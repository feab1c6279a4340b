"""Survive a failing model runtime: the batch that hit the failure gets INTERNAL, the runtime is
declared unusable after `failures_to_reload` failed batches in a row, and is then rebuilt in
the background until a rebuilt one passes its warm-up run.

`GuardedPipeline` wraps the pipeline the service schedules and has the same shape, so neither
the batcher nor the servicer knows it is there. A failure is an exception out of the inner
pipeline's `infer_batch` (the model run raised: an ONNX Runtime error, a CUDA error); an image
the pipeline refuses (a per-item `DetectError`) is no runtime failure and resets nothing.

While the runtime is unusable, every batch fails at once with UNAVAILABLE (retryable, saying
why) instead of feeding a runtime that is known bad, and `on_usable(False)` has been called
(the server turns its health check NOT_SERVING); `on_usable(True)` follows the swap to a
rebuilt pipeline. Batches already running on the old pipeline finish there; it is closed once
the last of them returns.

A CUDA fault that corrupts the process's context (an illegal address) cannot be cured by
rebuilding inside the process: the rebuilt runtime then fails its warm-up, the health check
stays NOT_SERVING, and the orchestrator (or, with --processes, the supervisor) restarts it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from facedet_server.errors import Code, DetectError, Unavailable
from facedet_server.model.spec import ModelSpec
from facedet_server.pipeline.base import Detection, Limits, Pipeline, Preparer, RuntimeInfo

log = structlog.get_logger("facedet.runtime_health")

# Failed batches in a row before the runtime counts as unusable: one failure can be a bad
# batch, three in a row with nothing succeeding between them is the runtime.
FAILURES_TO_RELOAD = 3
# Seconds between rebuild attempts: doubling from the first to the last.
RELOAD_BACKOFF = (0.5, 30.0)


class RuntimeFailed(DetectError):
    """The model run of this request's batch raised; the request gets INTERNAL."""

    code = Code.INTERNAL


class GuardedPipeline:
    """A `Pipeline` that delegates to the pipeline `build` made last, and rebuilds it when it
    fails (see the module docstring). Also the `RuntimeInfo` the service reports and closes."""

    def __init__(
        self,
        pipeline: Pipeline[Any],
        build: Callable[[], Pipeline[Any]],
        on_usable: Callable[[bool], None],
        failures_to_reload: int = FAILURES_TO_RELOAD,
        backoff: tuple[float, float] = RELOAD_BACKOFF,
    ) -> None:
        self._current = pipeline
        self._build = build
        self._on_usable = on_usable
        self.failures_to_reload = failures_to_reload
        self._backoff = backoff
        self._lock = threading.Lock()
        self._failures = 0  # failed batches in a row
        self._unusable: str | None = None  # why, while the runtime is unusable
        self._running: dict[int, int] = {}  # id(pipeline) -> batches running on it
        self._retired: list[Pipeline[Any]] = []  # replaced, closed once nothing runs on them
        self._closed = threading.Event()
        self._reloader: threading.Thread | None = None
        self.reloads = 0

    # The Pipeline protocol, delegated to the current pipeline.

    @property
    def backend(self) -> RuntimeInfo:
        return self

    @property
    def spec(self) -> ModelSpec:
        return self._current.spec

    @property
    def limits(self) -> Limits:
        return self._current.limits

    @property
    def preparer(self) -> Preparer[Any]:
        # Items prepared by one pipeline suit its rebuild: same model file, same settings.
        return self._current.preparer

    def warm_up(self) -> None:
        self._current.warm_up()

    @property
    def usable(self) -> bool:
        return self._unusable is None

    def infer_batch(self, items: Sequence[Any]) -> Sequence[Detection | DetectError]:
        with self._lock:
            if self._unusable is not None:
                raise Unavailable(
                    f"the model runtime is unusable ({self._unusable}) and is being reloaded; "
                    "retry shortly or on another instance"
                )
            pipeline = self._current
            self._running[id(pipeline)] = self._running.get(id(pipeline), 0) + 1
        try:
            results = pipeline.infer_batch(items)
        except DetectError:
            raise  # the pipeline's own verdict on the whole batch, not a runtime fault
        except Exception as exc:
            self._failed(pipeline, exc)
            raise RuntimeFailed(
                f"the model runtime failed on this request's batch: {_describe(exc)}"
            ) from exc
        else:
            with self._lock:
                if pipeline is self._current:
                    self._failures = 0
        finally:
            self._finished(pipeline)
        return results

    def _failed(self, pipeline: Pipeline[Any], exc: Exception) -> None:
        with self._lock:
            if pipeline is not self._current or self._unusable is not None:
                return  # the old runtime's last batches: already being replaced
            self._failures += 1
            failures = self._failures
            if failures >= self.failures_to_reload:
                self._unusable = f"{failures} model runs failed in a row, the last with {_describe(exc)}"
        log.error("runtime_failed", failures_in_a_row=failures, error=_describe(exc), exc_info=failures == 1)
        if failures >= self.failures_to_reload:
            log.error("runtime_unusable", reason=self._unusable)
            self._on_usable(False)
            self._reloader = threading.Thread(target=self._reload, name="runtime-reload", daemon=True)
            self._reloader.start()

    def _finished(self, pipeline: Pipeline[Any]) -> None:
        with self._lock:
            key = id(pipeline)
            self._running[key] -= 1
            if self._running[key] == 0:
                del self._running[key]
            done = [p for p in self._retired if id(p) not in self._running]
            self._retired = [p for p in self._retired if id(p) in self._running]
        for old in done:
            _close(old)

    def _reload(self) -> None:
        delay = self._backoff[0]
        attempt = 0
        while not self._closed.is_set():
            attempt += 1
            try:
                fresh = self._build()
                try:
                    fresh.warm_up()  # a runtime that cannot run one batch is no recovery
                except BaseException:
                    _close(fresh)
                    raise
            except Exception as exc:
                log.error("runtime_reload_failed", attempt=attempt, error=_describe(exc), retry_in_s=delay)
                if self._closed.wait(delay):
                    return
                delay = min(delay * 2, self._backoff[1])
                continue
            with self._lock:
                if self._closed.is_set():
                    self._retired.append(fresh)
                    break
                old, self._current = self._current, fresh
                self._failures, self._unusable = 0, None
                self.reloads += 1
                busy = id(old) in self._running
                if busy:  # closed by the last batch still running on it
                    self._retired.append(old)
            if not busy:
                _close(old)
            log.info("runtime_reloaded", attempt=attempt, reloads=self.reloads)
            self._on_usable(True)
            return

    # RuntimeInfo: what GetModelInfo reports and the service closes at exit.

    @property
    def name(self) -> str:
        return self._current.backend.name

    @property
    def device(self) -> str:
        return self._current.backend.device

    @property
    def max_batch(self) -> int:
        return self._current.backend.max_batch

    @property
    def model_sha256(self) -> str:
        return self._current.backend.model_sha256

    def close(self) -> None:
        self._closed.set()
        if self._reloader is not None:
            self._reloader.join()
        with self._lock:
            pipelines = [self._current, *self._retired]
            self._retired = []
        for pipeline in pipelines:
            _close(pipeline)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _close(pipeline: Pipeline[Any]) -> None:
    try:
        pipeline.backend.close()
    except Exception as exc:  # a broken runtime may fail to close too; it is dropped anyway
        log.warning("runtime_close_failed", error=_describe(exc))
