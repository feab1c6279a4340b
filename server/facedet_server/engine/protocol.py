"""The messages front ends and the engine exchange (framed by `wire`).

A front end opens one connection per inference thread and keeps one request in flight on it:
`Hello` -> `EngineInfo` once, then `RunBatch` -> `BatchDone` or `BatchFailed`, in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facedet_server.errors import DetectError
from facedet_server.model.spec import ModelSpec
from facedet_server.pipeline.host import Detection, Limits, Preparer


@dataclass(frozen=True)
class Hello:
    pass


@dataclass(frozen=True)
class EngineInfo:
    """What a front end needs to check requests and describe the model, without loading it:
    the engine's own `Preparer` (a frozen dataclass) travels whole."""

    preparer: Preparer
    spec: ModelSpec
    limits: Limits
    backend: str
    device: str
    model_sha256: str
    max_batch: int
    pid: int


@dataclass(frozen=True)
class RunBatch:
    items: list[Any]  # what the engine's Preparer made: Prepared or GpuPrepared


@dataclass(frozen=True)
class BatchDone:
    results: list[Detection | DetectError]


@dataclass(frozen=True)
class BatchFailed:
    """The whole batch failed in the engine (a runtime error, not a bad image)."""

    message: str
