"""Dynamic batching: requests from all calls and streams share one bounded queue, and workers
take up to `max_batch` of them at a time, waiting at most `max_delay_ms` for a batch to fill
while another batch runs (an idle model takes what is queued at once).

Under overload it serves what can still be used and refuses the rest at once: an item whose
deadline the queue's expected wait (learned per batch, `ServiceTime`) would overrun is refused
with RESOURCE_EXHAUSTED before any work, one whose deadline passes while queued is dropped unrun,
and one whose caller gives up leaves the queue at once (docs/reliability.md, "Overload").

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

from facedet_server.errors import DeadlineExceeded, Overloaded, Unavailable

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
    deadline: float | None  # time.perf_counter() by which the caller stops waiting


class ServiceTime:
    """Exponentially weighted averages of how long a batch runs and how long it spends per
    image, learned from every batch: what admission control predicts queue waits from."""

    WEIGHT = 0.2  # of the newest batch: a few batches follow a change of load

    def __init__(self) -> None:
        self.batch_s = 0.0  # 0 until the first batch: nothing is refused before it is known
        self.image_s = 0.0

    def record(self, seconds: float, size: int) -> None:
        if self.batch_s == 0.0:
            self.batch_s, self.image_s = seconds, seconds / size
            return
        w = self.WEIGHT
        self.batch_s += w * (seconds - self.batch_s)
        self.image_s += w * (seconds / size - self.image_s)


# An item is admitted only when the expected wait fits in this share of its deadline: the
# estimate trails changes of load (a CPU that other work starts sharing), and an item admitted
# that then misses its deadline wastes the capacity that a refusal would have kept.
ADMIT_SHARE = 0.8


def retry_after_ms(seconds: float) -> int:
    """A retry hint: at least 10 ms, at most 30 s."""
    return int(min(max(seconds, 0.01), 30.0) * 1000)


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
        # Waiting items in arrival order, by sequence number: a cancelled caller's item leaves at
        # once (its slot and its prepared tensor freed), not when a worker reaches it.
        self._queue: dict[int, _Pending[T, R]] = {}
        self._sequence = 0
        self._arrived = asyncio.Event()  # set while the queue has items
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False
        # Submitted and not yet answered: queued, held by a worker filling a batch, or running.
        self._outstanding = 0
        self._running = 0  # batches handed to the executor and not yet returned
        self._idle = asyncio.Event()
        self._idle.set()
        self.service_time = ServiceTime()
        self.batches = 0
        self.items = 0
        self.expired = 0  # items dropped before inference because their deadline had passed

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"batcher-{i}") for i in range(self.config.workers)
        ]

    def expected_wait(self, ahead: int = 0) -> float:
        """Seconds from now until an item submitted now would be answered, with `ahead` more
        items (admitted, still decoding) to be queued before it: the queue drains at `workers`
        images per `image_s`, then its own batch runs."""
        estimate = self.service_time
        waiting = len(self._queue) + ahead
        return waiting * estimate.image_s / self.config.workers + estimate.batch_s

    def admit(self, deadline: float | None, ahead: int = 0) -> None:
        """Raises Overloaded (RESOURCE_EXHAUSTED, with a retry hint) at once when an item
        submitted now could not be answered by `deadline` (time.perf_counter()), or when the
        queue is full; UNAVAILABLE while shutting down. Costs nothing: call it before any work."""
        if self._closing:
            raise Unavailable("server is shutting down; retry on another instance")
        waiting = len(self._queue) + ahead
        if waiting >= self.config.max_queue:
            raise Overloaded(
                f"server is overloaded: {waiting} requests already queued (limit "
                f"{self.config.max_queue}); retry with backoff",
                retry_after_ms(self.expected_wait(ahead) / 2),
            )
        if deadline is None:
            return
        wait = self.expected_wait(ahead)
        budget = (deadline - time.perf_counter()) * ADMIT_SHARE
        if wait > budget:
            raise Overloaded(
                f"server is overloaded: the queue's expected wait ({wait * 1000:.0f} ms) is longer "
                f"than this call's deadline leaves ({max(budget, 0) * 1000:.0f} ms); retry later",
                retry_after_ms(wait - budget),
            )

    async def submit(self, item: T, deadline: float | None = None) -> R:
        """Queue one item and wait for its result; RESOURCE_EXHAUSTED when the queue is full.
        With a `deadline` (time.perf_counter()), also when the queue's expected wait does not
        fit in it, and the item is dropped unrun (DEADLINE_EXCEEDED) should it pass queued."""
        self.admit(deadline)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        key = self._sequence
        self._sequence += 1
        self._queue[key] = _Pending(item, future, time.perf_counter(), deadline)
        self._arrived.set()
        self._outstanding += 1
        self._idle.clear()
        self._observer.queued(len(self._queue))
        future.add_done_callback(lambda f: self._withdraw(key, f))
        return await future

    def _withdraw(self, key: int, future: asyncio.Future[R]) -> None:
        """A caller gave up (its call was cancelled): its queued item goes now."""
        if future.cancelled() and self._queue.pop(key, None) is not None:
            self._finished(1)
            if not self._queue:
                self._arrived.clear()
            self._observer.queued(len(self._queue))

    def _finished(self, count: int) -> None:
        self._outstanding -= count
        if self._outstanding == 0:
            self._idle.set()

    async def _take(self, timeout: float | None = None) -> _Pending[T, R] | None:
        """The oldest queued item, waiting up to `timeout` (None: for ever) for one."""
        while not self._queue:
            if timeout is None:
                await self._arrived.wait()
                continue
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return None
        key = next(iter(self._queue))
        pending = self._queue.pop(key)
        if not self._queue:
            self._arrived.clear()
        return pending

    async def _next_batch(self) -> list[_Pending[T, R]]:
        first = await self._take()
        assert first is not None
        batch = [first]
        deadline = time.perf_counter() + self.config.max_delay_ms / 1000
        while len(batch) < self.config.max_batch:
            if self._queue:
                taken = await self._take(0)
            elif self._running == 0:
                # Nothing is running: waiting for company would only leave the model idle and
                # add max_delay_ms to a lone request. Under load a batch is always running, so
                # the next one fills while it waits its turn.
                break
            else:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                taken = await self._take(remaining)
            if taken is None:
                break
            batch.append(taken)
        return batch

    def _live(self, taken: list[_Pending[T, R]]) -> list[_Pending[T, R]]:
        """What of a batch is still worth running: not given up, and able to finish before its
        deadline (one batch's time from now). The rest fail DEADLINE_EXCEEDED unrun."""
        finish = time.perf_counter() + self.service_time.batch_s
        live = []
        for p in taken:
            if p.future.done():
                continue
            if p.deadline is not None and p.deadline < finish:
                self.expired += 1
                p.future.set_exception(
                    DeadlineExceeded("the call's deadline passed while it waited in the queue")
                )
                continue
            live.append(p)
        return live

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            taken = await self._next_batch()
            try:
                batch = self._live(taken)
                if batch:
                    await self._run(loop, batch)
            finally:
                self._finished(len(taken))

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[T, R]]) -> None:
        started = time.perf_counter()
        self._running += 1
        self._observer.batch_started(len(batch), len(self._queue))
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
        self.service_time.record(time.perf_counter() - started, len(batch))
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
        leftovers = list(self._queue.values())
        self._queue.clear()
        _fail(leftovers, Unavailable("server shut down before this request ran"))


def _fail(batch: Sequence[_Pending[T, R]], exc: BaseException) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
