"""The batcher under overload: admission by expected wait against a deadline, a cancelled
caller's slot freed at once, work whose deadline passed dropped before it runs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from facedet_server.errors import DeadlineExceeded, Overloaded
from facedet_server.serving.batcher import Batcher, BatcherConfig
from test_batcher import run


class Gate:
    """A `process` that holds each batch until released, and records what ran."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.open = threading.Event()
        self.ran: list[int] = []

    def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.open.wait(10)
        time.sleep(self.seconds)
        self.ran.extend(items)
        return list(items)


def make(gate: Gate, max_queue: int = 256) -> tuple[Batcher[int, int], ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(2)
    batcher: Batcher[int, int] = Batcher(gate, executor, BatcherConfig(1, 0.0, max_queue, 1))
    batcher.start()
    return batcher, executor


def test_a_deadline_the_queue_cannot_meet_is_refused_at_once() -> None:
    async def body() -> None:
        gate = Gate(seconds=0.05)
        gate.open.set()
        batcher, executor = make(gate)
        await batcher.submit(0)  # learns: a batch (of one) takes about 50 ms
        gate.open.clear()
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 21)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as refused:  # 19+ queued x 50 ms is far more than 0.1 s
            await batcher.submit(99, deadline=time.perf_counter() + 0.1)
        assert refused.value.retry_after_ms is not None and refused.value.retry_after_ms > 100
        # A deadline that fits is admitted.
        fits = asyncio.ensure_future(batcher.submit(100, deadline=time.perf_counter() + 30))
        gate.open.set()
        assert await fits == 100
        await asyncio.gather(*queued)
        assert 99 not in gate.ran
        await batcher.close()
        executor.shutdown()

    run(body())


def test_a_cancelled_caller_leaves_the_queue_at_once() -> None:
    async def body() -> None:
        gate = Gate()
        batcher, executor = make(gate)
        running = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # item 0 runs (held by the gate)
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0)
        assert batcher.depth == 5
        for task in waiting[:3]:
            task.cancel()
        await asyncio.sleep(0)
        assert batcher.depth == 2  # freed now, not when a worker reaches them
        gate.open.set()
        assert await asyncio.gather(running, *waiting[3:]) == [0, 4, 5]
        assert sorted(gate.ran) == [0, 4, 5]  # the cancelled ones never ran
        await batcher.close()
        executor.shutdown()

    run(body())


def test_work_whose_deadline_passed_in_the_queue_is_dropped_unrun() -> None:
    async def body() -> None:
        gate = Gate()
        batcher, executor = make(gate)
        running = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(batcher.submit(1, deadline=time.perf_counter() + 0.1))
        patient = asyncio.ensure_future(batcher.submit(2, deadline=time.perf_counter() + 30))
        await asyncio.sleep(0.3)  # item 1's deadline passes while item 0 holds the worker
        gate.open.set()
        assert await running == 0
        with pytest.raises(DeadlineExceeded):
            await late
        assert await patient == 2
        assert gate.ran == [0, 2]
        assert batcher.expired == 1
        await batcher.close()
        executor.shutdown()

    run(body())
