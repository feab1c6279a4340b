"""Give freed heap memory back to the operating system.

A burst of large requests (each stream may hold --stream-window frames of a few hundred KB)
leaves glibc's heaps holding that memory after it is freed, so a process's RSS stays at its
highest burst for good: what a container's memory limit sees, and what looks like a leak on a
dashboard. `malloc_trim(0)` hands the free pages back; it walks the heaps (a millisecond or so
for a few hundred MB), so it runs every --memory-trim-interval seconds, off the event loop."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import threading
from collections.abc import Callable
from functools import cache

import structlog

log = structlog.get_logger("facedet.memory")


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def trim_heap() -> bool:
    """Return free heap pages to the OS; False where the C library has no malloc_trim (musl,
    macOS), which is then a no-op."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


async def trim_periodically(interval: float) -> None:
    """For an asyncio server: trim every `interval` seconds until cancelled."""
    if _malloc_trim() is None:
        log.info("memory_trim_unavailable", reason="the C library has no malloc_trim")
        return
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(trim_heap)


def start_trim_thread(interval: float, stop: threading.Event) -> threading.Thread | None:
    """For a threaded process (the engine): trim every `interval` seconds until `stop` is set."""
    if _malloc_trim() is None:
        return None

    def loop() -> None:
        while not stop.wait(interval):
            trim_heap()

    thread = threading.Thread(target=loop, name="memory-trim", daemon=True)
    thread.start()
    return thread
