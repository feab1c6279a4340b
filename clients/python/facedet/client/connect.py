"""How long a call waits for the server to answer at all.

gRPC alone lets a call to a listener that never speaks HTTP/2 hang for its whole deadline (or
20 s, gRPC's connect timeout, without one) and then fail with a bare UNAVAILABLE or
DEADLINE_EXCEEDED. So until a server has answered once (and again after a call failed with
UNAVAILABLE or DEADLINE_EXCEEDED), the clients first send a health check bounded by the connect
timeout (and by the call's own timeout, which covers connecting too): no answer is
NoAnswerError "no FaceDetector answered at ADDR within S s"; a refused connection still fails
at once, with gRPC's reason. (Watching the channel's connectivity instead would need
`Channel.subscribe`, whose polling thread prints a traceback when the channel closes.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from facedet.client.errors import FaceDetectorError, NoAnswerError

DEFAULT_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ConnectBudget:
    """The wait for a first answer before one call, and the error should it run out."""

    seconds: float
    code: str  # "UNAVAILABLE" when the connect timeout ran out, "DEADLINE_EXCEEDED" the call's


def connect_budget(call_timeout: float | None, connect_timeout: float | None) -> ConnectBudget | None:
    """None: no limit set at all (gRPC's own behaviour)."""
    if call_timeout is not None and (connect_timeout is None or call_timeout <= connect_timeout):
        return ConnectBudget(max(call_timeout, 0.001), "DEADLINE_EXCEEDED")
    if connect_timeout is not None:
        return ConnectBudget(connect_timeout, "UNAVAILABLE")
    return None


def probe_failure(error: FaceDetectorError, budget: ConnectBudget, target: str) -> FaceDetectorError | None:
    """What a failed health probe means for the call: None where a server did answer (with any
    status but these two, e.g. UNIMPLEMENTED from a server without the health service)."""
    if error.code == "DEADLINE_EXCEEDED":
        return NoAnswerError(budget.code, target, budget.seconds)
    if error.code == "UNAVAILABLE":
        return error
    return None


def lost_server(error: FaceDetectorError) -> bool:
    """Whether, after `error`, the next call should check again that a server answers."""
    return error.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def remaining(call_timeout: float | None, started: float) -> float | None:
    """What is left of the call's timeout after waiting since `started` (time.monotonic())."""
    if call_timeout is None:
        return None
    return max(call_timeout - (time.monotonic() - started), 0.001)
