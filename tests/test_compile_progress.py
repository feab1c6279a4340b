"""The first start's compile progress (runtime.progress): while a slow step runs, a "compiling"
line every interval says what and for how long; a "compiling_done" line gives each slow step's
time; quick steps (graphs captured from the warm cache) stay quiet. The torch backend uses it
only when it compiles, on a GPU: tests/gpu/test_topology_gpu.py checks it there."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from facedet_server.runtime import progress
from facedet_server.runtime.progress import StepProgress


@contextlib.contextmanager
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MutableMapping[str, Any]]]:
    """capture_logs at info level, with the module's logger made anew inside it: a test that ran
    the server's logging set-up before (facedet bench sets "warning") leaves structlog filtering
    info lines out and caching loggers on first use, so either would hide these lines."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with structlog.testing.capture_logs() as logs:
            monkeypatch.setattr(progress, "log", structlog.get_logger("facedet.runtime"))
            yield logs
    finally:
        structlog.configure(**saved)


def test_a_slow_step_logs_progress_then_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = StepProgress("compiling", interval=0.05)
    with captured(monkeypatch) as logs:
        with steps.step("batch 2 at 640x384", mode="default"):
            time.sleep(0.3)
        with steps.step("batch 4 at 640x384", mode="default"):
            pass  # quick: nothing logged
    ticks = [r for r in logs if r["event"] == "compiling"]
    assert len(ticks) >= 3, logs
    assert all(r["what"] == "batch 2 at 640x384" and r["mode"] == "default" for r in ticks)
    assert [r["elapsed_s"] for r in ticks] == sorted(r["elapsed_s"] for r in ticks)
    monkeypatch.setattr(progress, "SLOW_STEP_S", 0.2)
    with captured(monkeypatch) as logs, steps.step("batch 8 at 640x640"):
        time.sleep(0.25)
    done = [r for r in logs if r["event"] == "compiling_done"]
    assert [(r["what"], r["seconds"] >= 0.2) for r in done] == [("batch 8 at 640x640", True)]
    # total_s counts from the first step of the start, across steps.
    assert max(r["total_s"] for r in logs if r["event"] == "compiling") >= 0.3


def test_steps_on_several_threads_share_the_start_time(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = StepProgress("compiling", interval=0.05)
    with captured(monkeypatch) as logs:
        threads = [threading.Thread(target=lambda: _slow(steps, 0.2)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert {r["what"] for r in logs if r["event"] == "compiling"} == {"slow"}
    assert all(r["total_s"] >= r["elapsed_s"] for r in logs if r["event"] == "compiling")


def _slow(steps: StepProgress, seconds: float) -> None:
    with steps.step("slow"):
        time.sleep(seconds)
