"""Errors the pipeline raises, each carrying the gRPC status it should become.

The pipeline does not import grpc; the servicer maps `Code` names onto grpc.StatusCode.
"""

from __future__ import annotations

from enum import Enum


class Code(Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class DetectError(Exception):
    """A request failed; `code` says which status the caller gets, the message says why."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(DetectError):
    code = Code.INVALID_ARGUMENT


class InvalidOptions(DetectError):
    code = Code.INVALID_ARGUMENT


class Overloaded(DetectError):
    """Refused at once, before any work: `retry_after_ms` (when known) is how long the server
    expects to need before the same request would be admitted; the transport passes it on."""

    code = Code.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class DeadlineExceeded(DetectError):
    """The caller's deadline passed (or would pass) before its request could be answered: the
    work is dropped rather than done for nobody."""

    code = Code.DEADLINE_EXCEEDED


class Unavailable(DetectError):
    code = Code.UNAVAILABLE
