"""The asyncio dynamic batcher: grouping, the fill delay, back-pressure, failures, shutdown.

pytest-asyncio is not a dependency: each test runs its own event loop with asyncio.run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from facedet_server.errors import Code, Overloaded, Unavailable
from facedet_server.serving.batcher import Batcher, BatcherConfig

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Run a test coroutine on a fresh loop; a hang fails the test instead of stalling the run."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Recorder:
    """A `process` that records its batches, optionally sleeps, and doubles each item."""

    def __init__(self, delay: float = 0.0, fail: Callable[[Sequence[int]], None] | None = None) -> None:
        self.delay = delay
        self.fail = fail
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0

    def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        with self.lock:
            self.batches.append(list(items))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if self.delay:
                time.sleep(self.delay)
            if self.fail is not None:
                self.fail(items)
            return [item * 2 for item in items]
        finally:
            with self.lock:
                self.running -= 1


def batcher_config(
    max_batch: int = 8, max_delay_ms: float = 2.0, max_queue: int = 256, workers: int = 1
) -> BatcherConfig:
    """A BatcherConfig with what these tests leave unsaid: a queue no test fills unless it says
    so, and one worker."""
    return BatcherConfig(max_batch, max_delay_ms, max_queue, workers)


async def with_batcher(
    process: Callable[[Sequence[int]], Sequence[int | BaseException]],
    config: BatcherConfig,
    body: Callable[[Batcher[int, int]], Awaitable[T]],
    start: bool = True,
    on_start: Callable[[int, float], None] | None = None,
) -> T:
    executor = ThreadPoolExecutor(max_workers=max(2, config.workers))
    try:
        batcher: Batcher[int, int] = Batcher(process, executor, config, on_start=on_start)
        if start:
            batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.close(drain=False)
    finally:
        executor.shutdown(wait=True)


def test_concurrent_submits_are_grouped_up_to_max_batch_in_order() -> None:
    recorder = Recorder()

    async def body(batcher: Batcher[int, int]) -> list[int]:
        return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    results = run(with_batcher(recorder, batcher_config(max_batch=4, max_delay_ms=50), body))
    assert results == [i * 2 for i in range(10)]  # each caller gets its own item's result
    assert recorder.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_counters_and_depth() -> None:
    recorder = Recorder()

    async def body(batcher: Batcher[int, int]) -> tuple[int, int, int]:
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0)  # every submit has queued its item; no worker started yet
        depth = batcher.depth
        batcher.start()
        await asyncio.gather(*tasks)
        return depth, batcher.batches, batcher.items

    depth, batches, items = run(
        with_batcher(recorder, batcher_config(max_batch=2, max_delay_ms=1), body, start=False)
    )
    assert depth == 5
    assert (batches, items) == (3, 5)
    assert [len(b) for b in recorder.batches] == [2, 2, 1]


def test_lone_item_on_an_idle_batcher_runs_at_once() -> None:
    recorder = Recorder()

    async def body(batcher: Batcher[int, int]) -> float:
        start = time.perf_counter()
        assert await batcher.submit(21) == 42
        return time.perf_counter() - start

    # Nothing else is running, so waiting 5 s for company would only add latency.
    assert run(with_batcher(recorder, batcher_config(max_batch=8, max_delay_ms=5000), body)) < 0.5


def test_while_a_batch_runs_a_lone_item_waits_for_the_delay_and_no_longer() -> None:
    recorder = Recorder(delay=1.0)
    queued: dict[int, float] = {}

    async def body(batcher: Batcher[int, int]) -> list[int]:
        busy = asyncio.ensure_future(batcher.submit(1))  # runs at once and holds a worker 1 s
        await asyncio.sleep(0.05)
        lone = await batcher.submit(2)
        return [await busy, lone]

    config = batcher_config(max_batch=8, max_delay_ms=200, workers=2)
    results = run(with_batcher(recorder, config, body, on_start=queued.__setitem__))
    assert results == [2, 4]
    assert recorder.batches == [[1], [2]]
    assert queued[1] < 0.1
    assert 0.19 <= queued[2] < 0.6  # waited max_delay_ms for company, not for the busy batch


def test_full_batch_does_not_wait_for_the_delay() -> None:
    recorder = Recorder()

    async def body(batcher: Batcher[int, int]) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(batcher.submit(i) for i in range(4)))
        return time.perf_counter() - start

    elapsed = run(with_batcher(recorder, batcher_config(max_batch=4, max_delay_ms=5000), body))
    assert elapsed < 1.0
    assert recorder.batches == [[0, 1, 2, 3]]


def test_items_arriving_within_the_delay_join_the_batch() -> None:
    recorder = Recorder(delay=0.5)

    async def body(batcher: Batcher[int, int]) -> list[int]:
        busy = asyncio.ensure_future(batcher.submit(0))  # keeps one worker busy
        await asyncio.sleep(0.05)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit(2))
        return list(await asyncio.gather(busy, first, second))

    config = batcher_config(max_batch=8, max_delay_ms=400, workers=2)
    assert run(with_batcher(recorder, config, body)) == [0, 2, 4]
    assert recorder.batches == [[0], [1, 2]]


def test_full_queue_is_overloaded() -> None:
    recorder = Recorder()

    async def body(batcher: Batcher[int, int]) -> list[int]:
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await batcher.submit(99)
        assert info.value.code is Code.RESOURCE_EXHAUSTED
        assert "3 requests already queued" in info.value.message and "limit 3" in info.value.message
        batcher.start()
        results = list(await asyncio.gather(*tasks))
        # Once the queue has drained, new items are accepted again.
        results.append(await batcher.submit(5))
        return results

    config = batcher_config(max_batch=8, max_delay_ms=1, max_queue=3)
    assert run(with_batcher(recorder, config, body, start=False)) == [0, 2, 4, 10]
    assert 99 not in [i for b in recorder.batches for i in b]


def test_a_failing_batch_fails_all_its_items_and_the_next_batch_works() -> None:
    def fail(items: Sequence[int]) -> None:
        if 666 in items:
            raise RuntimeError("model exploded")

    recorder = Recorder(fail=fail)

    async def body(batcher: Batcher[int, int]) -> list[int]:
        doomed = await asyncio.gather(*(batcher.submit(i) for i in (1, 666, 3)), return_exceptions=True)
        assert all(isinstance(e, RuntimeError) and str(e) == "model exploded" for e in doomed), doomed
        return list(await asyncio.gather(*(batcher.submit(i) for i in (4, 5))))

    assert run(with_batcher(recorder, batcher_config(max_batch=3, max_delay_ms=20), body)) == [8, 10]
    assert recorder.batches == [[1, 666, 3], [4, 5]]


def test_an_exception_in_one_slot_fails_only_that_item() -> None:
    def process(items: Sequence[int]) -> list[int | BaseException]:
        return [ValueError(f"bad {i}") if i < 0 else i * 2 for i in items]

    async def body(batcher: Batcher[int, int]) -> list[object]:
        return list(await asyncio.gather(*(batcher.submit(i) for i in (1, -2, 3)), return_exceptions=True))

    results = run(with_batcher(process, batcher_config(max_batch=3, max_delay_ms=20), body))
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad -2"


def test_wrong_number_of_results_fails_the_batch() -> None:
    def process(items: Sequence[int]) -> list[int | BaseException]:
        return [0]

    async def body(batcher: Batcher[int, int]) -> list[object]:
        return list(await asyncio.gather(*(batcher.submit(i) for i in (1, 2)), return_exceptions=True))

    results = run(with_batcher(process, batcher_config(max_batch=2, max_delay_ms=20), body))
    assert all(isinstance(r, RuntimeError) and "batch of 2 produced 1 results" in str(r) for r in results)


def test_close_with_drain_finishes_queued_items_then_refuses() -> None:
    recorder = Recorder(delay=0.05)

    async def body(batcher: Batcher[int, int]) -> list[int]:
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(6)]
        await asyncio.sleep(0.01)  # the first batch is running, the rest are queued
        assert batcher.depth > 0
        await batcher.close(drain=True)
        assert all(t.done() for t in tasks)
        with pytest.raises(Unavailable) as info:
            await batcher.submit(7)
        assert info.value.code is Code.UNAVAILABLE
        return [t.result() for t in tasks]

    assert run(with_batcher(recorder, batcher_config(max_batch=2, max_delay_ms=1), body)) == [
        0,
        2,
        4,
        6,
        8,
        10,
    ]
    assert sorted([i for b in recorder.batches for i in b]) == list(range(6))


def test_close_without_drain_fails_queued_items_as_unavailable() -> None:
    recorder = Recorder(delay=0.2)

    async def body(batcher: Batcher[int, int]) -> list[object]:
        running = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)  # item 1 is being processed
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0.01)
        await batcher.close(drain=False)
        running.cancel()
        return list(await asyncio.gather(*queued, return_exceptions=True))

    results = run(with_batcher(recorder, batcher_config(max_batch=1, max_delay_ms=0), body))
    assert all(isinstance(r, Unavailable) and "shut down" in r.message for r in results), results
    assert recorder.batches == [[1]]


def test_idle_close_returns_at_once() -> None:
    async def body(batcher: Batcher[int, int]) -> float:
        assert await batcher.submit(1) == 2
        start = time.perf_counter()
        await batcher.close(drain=True)
        return time.perf_counter() - start

    assert run(with_batcher(Recorder(), batcher_config(max_delay_ms=1), body)) < 0.5


def test_on_start_gets_the_time_each_item_queued() -> None:
    started: list[tuple[int, float]] = []
    recorder = Recorder(delay=0.15)

    async def body(batcher: Batcher[int, int]) -> None:
        await asyncio.gather(batcher.submit(1), batcher.submit(2))

    config = batcher_config(max_batch=1, max_delay_ms=0)
    run(with_batcher(recorder, config, body, on_start=lambda item, waited: started.append((item, waited))))
    assert [item for item, _ in started] == [1, 2]
    assert 0 <= started[0][1] < 0.1  # went straight in
    assert 0.14 <= started[1][1] < 1.0  # waited for the first batch to finish


def test_cancelled_callers_are_skipped() -> None:
    recorder = Recorder()

    async def body(batcher: Batcher[int, int]) -> list[object]:
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0)  # all three are queued
        tasks[1].cancel()
        await asyncio.sleep(0)
        batcher.start()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = run(with_batcher(recorder, batcher_config(max_batch=8, max_delay_ms=10), body, start=False))
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], asyncio.CancelledError)
    assert recorder.batches == [[1, 3]]


def test_a_batch_of_only_cancelled_callers_is_not_run() -> None:
    recorder = Recorder()

    async def body(batcher: Batcher[int, int]) -> int:
        task = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0)
        task.cancel()
        batcher.start()
        await asyncio.sleep(0.05)
        # The worker is still alive afterwards.
        return await batcher.submit(2)

    assert run(with_batcher(recorder, batcher_config(max_batch=8, max_delay_ms=1), body, start=False)) == 4
    assert recorder.batches == [[2]]


def test_two_workers_run_two_batches_at_once() -> None:
    barrier = threading.Barrier(2, timeout=3)

    def both_at_once(items: Sequence[int]) -> None:
        barrier.wait()  # breaks unless a second batch is running at the same time

    recorder = Recorder(fail=both_at_once)

    async def body(batcher: Batcher[int, int]) -> list[int]:
        return list(await asyncio.gather(batcher.submit(1), batcher.submit(2)))

    assert run(with_batcher(recorder, batcher_config(max_batch=1, max_delay_ms=0, workers=2), body)) == [2, 4]
    assert recorder.most_running == 2


def test_one_worker_runs_one_batch_at_a_time() -> None:
    recorder = Recorder(delay=0.03)

    async def body(batcher: Batcher[int, int]) -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(4))))

    assert run(with_batcher(recorder, batcher_config(max_batch=1, max_delay_ms=0, workers=1), body)) == [
        0,
        2,
        4,
        6,
    ]
    assert recorder.most_running == 1


@pytest.mark.parametrize(
    "config",
    [
        batcher_config(max_batch=0),
        batcher_config(max_queue=0),
        batcher_config(workers=0),
        batcher_config(max_delay_ms=-1),
    ],
)
def test_invalid_config(config: BatcherConfig) -> None:
    with ThreadPoolExecutor(1) as executor, pytest.raises(ValueError, match="invalid batcher config"):
        Batcher(Recorder(), executor, config)


def test_drain_with_two_workers_finishes_a_batch_still_filling() -> None:
    recorder = Recorder(delay=0.05)

    async def body(batcher: Batcher[int, int]) -> list[int]:
        full = [asyncio.ensure_future(batcher.submit(i)) for i in range(4)]  # worker 1: a full batch
        await asyncio.sleep(0.01)
        lone = asyncio.ensure_future(batcher.submit(100))  # worker 2: waits up to 300 ms for company
        await asyncio.sleep(0.01)
        await batcher.close(drain=True)
        done, _ = await asyncio.wait([lone], timeout=1.0)
        assert lone in done, "the caller of an item accepted before close() never got an answer"
        return [*(t.result() for t in full), lone.result()]

    config = batcher_config(max_batch=4, max_delay_ms=300, workers=2)
    assert run(with_batcher(recorder, config, body)) == [0, 2, 4, 6, 200]


def test_close_without_drain_answers_the_batch_in_flight() -> None:
    recorder = Recorder(delay=0.1)

    async def body(batcher: Batcher[int, int]) -> object:
        running = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.03)  # item 1 is being processed
        await batcher.close(drain=False)
        done, _ = await asyncio.wait([running], timeout=1.0)
        assert running in done, "the caller of the batch in flight never got an answer"
        return running.result() if running.exception() is None else running.exception()

    outcome = run(with_batcher(recorder, batcher_config(max_batch=1, max_delay_ms=0), body))
    assert outcome == 2 or isinstance(outcome, Unavailable)


def test_nan_delay_is_rejected() -> None:
    with ThreadPoolExecutor(1) as executor, pytest.raises(ValueError, match="invalid batcher config"):
        Batcher(Recorder(), executor, batcher_config(max_delay_ms=float("nan")))
