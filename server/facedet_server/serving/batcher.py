"""Dynamic batching: requests from all calls and streams share one bounded queue, and workers
take up to `max_batch` of them at a time, waiting at most `max_delay_ms` for a batch to fill
while another batch runs (an idle model takes what is queued at once).

The batcher is generic: it knows nothing of images or models, only "a list of items in, a list
of results (or exceptions) out", run on an executor so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from facedet_server.errors import Overloaded, Unavailable

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatcherConfig:
    """No defaults: the server's come from its settings (facedet_server.app.config)."""

    max_batch: int
    max_delay_ms: float
    max_queue: int  # requests waiting (not yet in a batch) before new ones are refused
    workers: int  # batches in flight at once (2+ overlaps host work with a GPU batch)


class BatchObserver(Protocol):
    """What the batcher reports as it runs (the server's metrics)."""

    def queued(self, depth: int) -> None: ...

    def batch_started(self, size: int, depth: int) -> None: ...


class Unobserved:
    """The default BatchObserver: reports go nowhere."""

    def queued(self, depth: int) -> None:
        pass

    def batch_started(self, size: int, depth: int) -> None:
        pass


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float


class Batcher(Generic[T, R]):
    def __init__(
        self,
        process: Callable[[Sequence[T]], Sequence[R | BaseException]],
        executor: Executor,
        config: BatcherConfig,
        on_start: Callable[[T, float], None] | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        """`process` maps a batch to results of the same length (an exception in a slot fails
        only that item), or raises to fail the whole batch.
        `on_start(item, seconds_queued)` is called as each item's batch starts."""
        if config.max_batch < 1 or config.max_queue < 1 or config.workers < 1 or not config.max_delay_ms >= 0:
            raise ValueError(f"invalid batcher config {config}")
        self._process = process
        self._executor = executor
        self.config = config
        self._on_start = on_start
        self._observer = observer or Unobserved()
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False
        # Submitted and not yet answered: queued, held by a worker filling a batch, or running.
        self._outstanding = 0
        self._running = 0  # batches handed to the executor and not yet returned
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = 0
        self.items = 0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"batcher-{i}") for i in range(self.config.workers)
        ]

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result; RESOURCE_EXHAUSTED when the queue is full."""
        if self._closing:
            raise Unavailable("server is shutting down; retry on another instance")
        if self._queue.qsize() >= self.config.max_queue:
            raise Overloaded(
                f"server is overloaded: {self._queue.qsize()} requests already queued (limit "
                f"{self.config.max_queue}); retry with backoff"
            )
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, future, time.perf_counter()))
        self._outstanding += 1
        self._idle.clear()
        self._observer.queued(self._queue.qsize())
        return await future

    async def _next_batch(self) -> list[_Pending[T, R]]:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.config.max_delay_ms / 1000
        while len(batch) < self.config.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            if self._running == 0:
                # Nothing is running: waiting for company would only leave the model idle and
                # add max_delay_ms to a lone request. Under load a batch is always running, so
                # the next one fills while it waits its turn.
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            taken = await self._next_batch()
            # A caller that gave up (cancelled RPC) no longer needs its slot in the batch.
            batch = [p for p in taken if not p.future.done()]
            try:
                if batch:
                    await self._run(loop, batch)
            finally:
                self._outstanding -= len(taken)
                if self._outstanding == 0:
                    self._idle.set()

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[T, R]]) -> None:
        started = time.perf_counter()
        self._running += 1
        self._observer.batch_started(len(batch), self._queue.qsize())
        if self._on_start is not None:
            for p in batch:
                self._on_start(p.item, started - p.enqueued)
        try:
            results = await loop.run_in_executor(self._executor, self._process, [p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} produced {len(results)} results")
        except asyncio.CancelledError:
            # close(drain=False) cancelled us mid-batch: its callers must still hear something.
            _fail(batch, Unavailable("server shut down while this request ran"))
            raise
        except Exception as exc:
            _fail(batch, exc)
            return
        finally:
            self._running -= 1
            self.batches += 1
            self.items += len(batch)
        for p, result in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)

    async def close(self, drain: bool = True) -> None:
        """Refuse new items; with drain, finish every queued and running one first."""
        self._closing = True
        if drain:
            await self._idle.wait()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            _fail([pending], Unavailable("server shut down before this request ran"))


def _fail(batch: Sequence[_Pending[T, R]], exc: BaseException) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
