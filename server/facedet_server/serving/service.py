"""The detection service: options, the decode pool, the batcher and statistics, behind one
async `detect` call. Transport-free, so the gRPC servicer and the in-process benchmark share it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol

import numpy as np

from facedet_server.errors import DeadlineExceeded, DetectError
from facedet_server.faces.options import Options, resolve_options
from facedet_server.image.inputs import ImageInput
from facedet_server.pipeline.base import Detection, P, Pipeline, Preparer, Timing
from facedet_server.serving.batcher import Batcher, BatcherConfig, BatchObserver, Unobserved


@dataclass
class Stats:
    """Counters for the periodic summary line; reset each time it is read."""

    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    latencies_us: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def summary(self) -> dict[str, object]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        lat = np.asarray(self.latencies_us or [0])
        return {
            "ok": self.ok,
            "failed": dict(self.failed),
            "img_per_s": round(self.ok / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)) / 1000, 2),
            "p99_ms": round(float(np.percentile(lat, 99)) / 1000, 2),
        }


class ServiceMetrics(BatchObserver, Protocol):
    """What the service reports (the server's metrics): its batcher's reports, and each answered
    image's stage times."""

    def detected(self, timing: Timing) -> None: ...


class NoServiceMetrics(Unobserved):
    def detected(self, timing: Timing) -> None:
        pass


@dataclass(frozen=True)
class RequestOptions:
    """Options as a request carries them: zero means the server default."""

    min_confidence: float = 0.0
    iou_threshold: float = 0.0
    max_faces: int = 0
    min_face_size: float = 0.0
    ignore_exif_orientation: bool = False


def request_options(defaults: Options, requested: RequestOptions, max_faces_limit: int) -> Options:
    """What a request asks for, checked, with the server's defaults where it leaves a field at 0."""
    return resolve_options(
        defaults,
        min_confidence=requested.min_confidence,
        iou_threshold=requested.iou_threshold,
        max_faces=requested.max_faces,
        min_face_size=requested.min_face_size,
        max_faces_limit=max_faces_limit,
        ignore_exif_orientation=requested.ignore_exif_orientation,
    )


def lower_priority(nice: int) -> None:
    """Run on each new decode and inference thread: `nice` more niceness for it (Linux sets it
    per thread). With every core busy under overload, the event loop, which answers health
    checks and refuses what cannot be served, then gets the CPU before the threads doing the
    heavy work, instead of taking its turn behind them."""
    if nice > 0 and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def _prepare_unless_expired(
    preparer: Preparer[P], image: ImageInput, options: Options, deadline: float | None
) -> P:
    """On a decode thread: a request whose deadline passed while it waited for the thread is
    not decoded for nobody."""
    if deadline is not None and time.perf_counter() > deadline:
        raise DeadlineExceeded("the call's deadline passed before its image was decoded")
    return preparer.prepare(image, options)


class DetectionService(Generic[P]):
    """Generic over the pipeline's prepared item, which it only carries from the preparer
    to the batcher and back to the pipeline."""

    def __init__(
        self,
        pipeline: Pipeline[P],
        batcher_config: BatcherConfig,
        defaults: Options,
        decode_threads: int = 0,
        metrics: ServiceMetrics | None = None,
        worker_nice: int = 0,
    ) -> None:
        """`worker_nice` is added to the niceness of the decode and inference threads (see
        `lower_priority`)."""
        self.pipeline = pipeline
        self.metrics = metrics or NoServiceMetrics()
        self.defaults = defaults
        lower = functools.partial(lower_priority, worker_nice)
        self.decode_pool = ThreadPoolExecutor(
            decode_threads or os.cpu_count() or 1, thread_name_prefix="decode", initializer=lower
        )
        # One thread per batch worker: the backend runs there, never on the event loop.
        self.infer_pool = ThreadPoolExecutor(
            batcher_config.workers, thread_name_prefix="infer", initializer=lower
        )
        self.batcher: Batcher[P, Detection] = Batcher(
            self._infer, self.infer_pool, batcher_config, on_start=self._record_queue, observer=self.metrics
        )
        self.stats = Stats()
        self._preparing = 0  # admitted requests decoding (or waiting for a decode thread)

    def _infer(self, items: Sequence[P]) -> Sequence[Detection | DetectError]:
        return self.pipeline.infer_batch(items)

    @staticmethod
    def _record_queue(item: P, seconds: float) -> None:
        item.timing.queue_us = int(seconds * 1e6)

    def warm_up(self) -> None:
        """Run the pipeline's warm-up on every inference thread (each has its own CUDA stream and
        graphs on the GPU path), so the first requests pay for nothing."""
        workers = self.batcher.config.workers
        barrier = threading.Barrier(workers)

        def warm() -> None:
            barrier.wait()  # holds each task on its own thread until all workers have one
            self.pipeline.warm_up()

        for future in [self.infer_pool.submit(warm) for _ in range(workers)]:
            future.result()

    def start(self) -> None:
        self.batcher.start()

    def options(self, requested: RequestOptions) -> Options:
        return request_options(self.defaults, requested, self.pipeline.limits.max_faces)

    async def detect(
        self, image: ImageInput, requested: RequestOptions | None = None, deadline: float | None = None
    ) -> Detection:
        """One image's detection. `deadline` (time.perf_counter(), None: none) is when the caller
        stops waiting: a request the queue could not answer by then is refused at once
        (Overloaded, RESOURCE_EXHAUSTED, with a retry hint), and one whose deadline passes
        before its decode or its batch starts is dropped (DeadlineExceeded) rather than run."""
        start = time.perf_counter()
        try:
            # Before any work: what is admitted and still decoding will queue ahead of this one.
            self.batcher.admit(deadline, ahead=self._preparing)
            options = self.options(requested or RequestOptions())
            preparer = self.pipeline.preparer
            prepared = preparer.prepare_inline(image, options)
            if prepared is None:
                loop = asyncio.get_running_loop()
                self._preparing += 1
                try:
                    prepared = await loop.run_in_executor(
                        self.decode_pool, _prepare_unless_expired, preparer, image, options, deadline
                    )
                finally:
                    self._preparing -= 1
            detection = await self.batcher.submit(prepared, deadline)
        except DetectError as exc:
            self.stats.failed[exc.code.value] += 1
            raise
        detection.timing.total_us = int((time.perf_counter() - start) * 1e6)
        self.stats.ok += 1
        self.stats.latencies_us.append(detection.timing.total_us)
        self.metrics.detected(detection.timing)
        return detection

    def record_rejection(self, error: DetectError) -> None:
        """Count a request the transport refused before `detect` (over the message size limit),
        so the summary's failures by status include it."""
        self.stats.failed[error.code.value] += 1

    def take_stats(self) -> Stats:
        stats, self.stats = self.stats, Stats()
        return stats

    async def close(self, drain: bool = True) -> None:
        await self.batcher.close(drain=drain)
        self.decode_pool.shutdown(wait=True)
        self.infer_pool.shutdown(wait=True)
        self.pipeline.backend.close()
