"""Heap trimming (`facedet_server.app.memory`): freed memory goes back to the OS, so RSS follows
what is live rather than the largest burst."""

from __future__ import annotations

import asyncio
import os
import threading
import time

from facedet_server.app.memory import start_trim_thread, trim_heap, trim_periodically
from facedet_test_support import rss_kib

MIB = 1024


def _burst_then_free() -> tuple[int, list[bytearray]]:
    """Allocate ~200 MB in 64 KB blocks (below glibc's mmap threshold, so they come from the
    heap), keep the last one (it pins the heap's top, as live objects do in a server) and free
    the rest: RSS stays up until the heap is trimmed."""
    blocks = [bytearray(64 * 1024) for _ in range(3200)]
    for block in blocks:
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page
    keep = [blocks[-1]]
    del blocks
    return rss_kib(os.getpid()), keep


def test_trim_hands_freed_heap_back() -> None:
    before, keep = _burst_then_free()
    assert trim_heap(), "this machine's glibc has malloc_trim"
    after = rss_kib(os.getpid())
    assert before - after > 100 * MIB, f"RSS {before} -> {after} KiB after trimming"
    assert keep


def test_the_periodic_forms_trim() -> None:
    before, keep = _burst_then_free()
    stop = threading.Event()
    thread = start_trim_thread(0.05, stop)
    assert thread is not None
    time.sleep(0.5)
    stop.set()
    thread.join(1)
    assert not thread.is_alive()
    assert before - rss_kib(os.getpid()) > 100 * MIB

    async def run_briefly() -> None:
        task = asyncio.create_task(trim_periodically(0.05))
        await asyncio.sleep(0.5)
        task.cancel()

    before, keep = _burst_then_free()
    asyncio.run(run_briefly())
    assert before - rss_kib(os.getpid()) > 100 * MIB
    assert keep
