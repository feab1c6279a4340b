"""Progress of a long start-up step in the log: the torch backend's first start compiles the model
for minutes (197 s measured on an H200, 2026-12-01), and a log that says nothing meanwhile looks
like a hung server. While a step runs, a "compiling" line every `interval` seconds says what is
being compiled and for how long; a "compiled" line says how long each slow step took."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

log = structlog.get_logger("facedet.runtime")

PROGRESS_INTERVAL_S = 10.0
SLOW_STEP_S = 1.0  # steps shorter than this (a graph captured from the cache) are not logged


class StepProgress:
    """Shared by the inference threads warming up at once: `total_s` counts from the first step."""

    def __init__(self, event: str = "compiling", interval: float = PROGRESS_INTERVAL_S) -> None:
        self.event = event
        self.interval = interval
        self._first: float | None = None
        self._lock = threading.Lock()

    @contextmanager
    def step(self, what: str, **fields: Any) -> Iterator[None]:
        started = time.perf_counter()
        with self._lock:
            if self._first is None:
                self._first = started
            first = self._first
        done = threading.Event()

        def tick() -> None:
            while not done.wait(self.interval):
                now = time.perf_counter()
                log.info(
                    self.event,
                    what=what,
                    elapsed_s=round(now - started, 1),
                    total_s=round(now - first, 1),
                    **fields,
                )

        ticker = threading.Thread(target=tick, name="compile-progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
            seconds = time.perf_counter() - started
            if seconds >= SLOW_STEP_S:
                log.info(f"{self.event}_done", what=what, seconds=round(seconds, 1), **fields)
