"""Errors the pipeline raises, each carrying the gRPC status it should become.

The pipeline does not import grpc; the servicer maps `Code` names onto grpc.StatusCode.
"""

from __future__ import annotations

from enum import Enum


class Code(Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
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
    code = Code.RESOURCE_EXHAUSTED


class Unavailable(DetectError):
    code = Code.UNAVAILABLE
