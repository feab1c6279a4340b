"""Whether the server under load still answers, and how long a client waits after it did not.

A server that died answers every call at once with UNAVAILABLE; clients that kept calling would
spin the CPU and fill the report with thousands of errors. So a client backs off exponentially
after each UNAVAILABLE in a row, and when no call of the process has been answered for
`give_up_s`, the run is stopped early: its figures would only measure the outage.
"""

from __future__ import annotations

import asyncio
import math

BACKOFF_FIRST_S = 0.01
BACKOFF_MAX_S = 0.5  # keeps a few calls a second going, to notice the server back (or gone for good)
GIVE_UP_S = 5.0
OTHER_ERROR_WAIT_S = 0.01  # after any other failed call: keeps a failing closed loop from spinning a core
UNAVAILABLE = "UNAVAILABLE"


def backoff_s(failures: int) -> float:
    """The wait after the `failures`-th UNAVAILABLE in a row (1 for the first)."""
    return min(math.ldexp(BACKOFF_FIRST_S, max(failures - 1, 0)), BACKOFF_MAX_S)


class Reachability:
    """What one process's clients saw of the server. Any answer, even an error status other than
    UNAVAILABLE, means it is there; UNAVAILABLE from every call for `give_up_s` sets `stopped`."""

    def __init__(self, give_up_s: float = GIVE_UP_S) -> None:
        self.give_up_s = give_up_s
        self.stopped = asyncio.Event()
        self.stopped_at: float | None = None  # perf_counter time
        self.reason = ""
        self._down_since: float | None = None

    def answered(self) -> None:
        self._down_since = None

    def unavailable(self, now: float) -> None:
        if self._down_since is None:
            self._down_since = now
        elif now - self._down_since >= self.give_up_s and not self.stopped.is_set():
            self.stopped_at = now
            self.reason = f"the server was unreachable (UNAVAILABLE) for {self.give_up_s:g} s"
            self.stopped.set()


class Backoff:
    """One client's (or the open loop's) waits, over the process's shared Reachability."""

    def __init__(self, reachability: Reachability) -> None:
        self.reachability = reachability
        self.failures = 0  # UNAVAILABLE in a row

    def answered(self) -> None:
        self.failures = 0
        self.reachability.answered()

    def failed(self, status: str, now: float) -> float:
        """Record a failed call (`status` by name); returns the seconds to wait before the next."""
        if status != UNAVAILABLE:
            self.answered()
            return OTHER_ERROR_WAIT_S
        self.failures += 1
        self.reachability.unavailable(now)
        return backoff_s(self.failures)
