"""grpc.health.v1 for this server: NOT_SERVING until the model is warm, SERVING after, and
NOT_SERVING for good once draining starts.

Our own small servicer rather than grpcio-health-checking's, because its Watch streams never
end: a load balancer's open watch would then hold shutdown for the whole grace period.
Here every Watch ends (status OK) right after it has sent the final NOT_SERVING.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Status = int  # a HealthCheckResponse.ServingStatus value
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, services: list[str]) -> None:
        self._status: dict[str, Status] = dict.fromkeys(services, NOT_SERVING)
        self._changed = asyncio.Condition()
        self.draining = False

    async def set_all(self, status: Status) -> None:
        if self.draining:
            return
        async with self._changed:
            self._status = dict.fromkeys(self._status, status)
            self._changed.notify_all()

    def serving(self, service: str = "") -> bool:
        """Whether `service` reports SERVING now (the HTTP front end's /ping follows it)."""
        return bool(self._status.get(service) == SERVING)

    async def drain(self) -> None:
        """NOT_SERVING from now on; open Watch streams send it and end."""
        await self.set_all(NOT_SERVING)
        async with self._changed:
            self.draining = True
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: Status | None = None
        while True:
            async with self._changed:
                status = self._status.get(request.service, SERVICE_UNKNOWN)
                draining = self.draining
                if status == last and not draining:
                    await self._changed.wait()
                    continue
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if draining:
                return
