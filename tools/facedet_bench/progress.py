"""`facedet bench`'s live progress line: on a terminal only, one line of stderr rewritten in place.

Load generators (this process's, or spawned workers') each publish their running counts into
their own slot of a shared array; the line adds them up. Nothing is shown, and nothing shared,
when stderr is not a terminal, so scripts see exactly the final report.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import time
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass
from typing import TextIO

FIELDS = 3  # per load generator: requests counted, requests failed, measured seconds so far
INTERVAL_S = 0.25
CLEAR = "\r\x1b[K"  # back to the line's start, erase it


def stream_for_progress() -> TextIO | None:
    """stderr when it is a terminal (someone is watching); None turns progress off."""
    return sys.stderr if sys.stderr.isatty() else None


def shared_values(generators: int) -> MutableSequence[float]:
    """Zeroed slots for `generators` load generators, in shared memory: spawned worker
    processes receive it as an argument and write their own slot."""
    values: MutableSequence[float] = multiprocessing.get_context("spawn").RawArray("d", FIELDS * generators)
    return values


@dataclass(frozen=True)
class Slot:
    """One load generator's place in the shared values (picklable for a spawned worker)."""

    values: MutableSequence[float]
    index: int

    def publish(self, requests: int, errors: int, measured_s: float) -> None:
        at = FIELDS * self.index
        self.values[at : at + FIELDS] = [float(requests), float(errors), measured_s]


@dataclass(frozen=True)
class Snapshot:
    elapsed_s: float  # since the run started, starting workers and the warm-up included
    measured_s: float  # of the measured window so far (the longest of the generators')
    requests: int
    errors: int


def snapshot(values: Sequence[float], elapsed_s: float) -> Snapshot:
    requests = errors = 0.0
    measured = 0.0
    for at in range(0, len(values), FIELDS):
        requests += values[at]
        errors += values[at + 1]
        measured = max(measured, values[at + 2])
    return Snapshot(elapsed_s, measured, int(requests), int(errors))


def progress_line(label: str, now: Snapshot, duration_s: float) -> str:
    """The clock is the measured window's once it has begun (worker processes starting and the
    warm-up come first, for however long they take)."""
    if now.measured_s <= 0:
        return f"{label}: warming up, {now.elapsed_s:.1f} s"
    rate = now.requests / now.measured_s
    return (
        f"{label}: {now.measured_s:.1f}/{duration_s:g} s, {now.requests} requests, {rate:.1f} img/s, "
        f"{now.errors} errors"
    )


async def show(stream: TextIO, label: str, duration_s: float, values: Sequence[float]) -> None:
    """Rewrite the line every INTERVAL_S until cancelled, then erase it (the report follows).
    The line is cut to the terminal's width: one that wrapped could not be rewritten in place."""
    started = time.monotonic()
    try:
        while True:
            line = progress_line(label, snapshot(values, time.monotonic() - started), duration_s)
            stream.write(CLEAR + line[: _columns(stream) - 1])
            stream.flush()
            await asyncio.sleep(INTERVAL_S)
    finally:
        stream.write(CLEAR)
        stream.flush()


def _columns(stream: TextIO) -> int:
    """The terminal's width; 80 where it says none (a pty nobody sized reports 0)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return columns if columns > 0 else 80
