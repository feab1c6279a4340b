"""The HTTP front end (aiohttp, in the server's own event loop): `PUT`/`POST /predictions/{model}`
take the image bytes as the body and answer the demo's JSON; `GET /ping` answers as TorchServe
does. Thin like the gRPC servicer: the body is read within --max-message-bytes, handed to the
same DetectionService, and failures are mapped by `demo_json`. aiohttp was chosen over uvicorn +
starlette by measurement (docs/benchmarks.md) and because it runs inside a loop it does not own,
leaving the server's signal handlers alone."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.http import HttpVersion11

from facedet_server.errors import Code, DeadlineExceeded, DetectError, Unavailable
from facedet_server.image.inputs import EncodedImage
from facedet_server.serving.service import DetectionService
from facedet_server.transport.http.demo_json import (
    BadRequest,
    BodyTooLarge,
    error_body,
    error_json,
    faces_body,
    http_status,
    ping_body,
    retry_after,
)
from facedet_server.transport.http.tls import HttpTls, HttpTlsError

log = structlog.get_logger("facedet.http")
JSON = "application/json"
METHOD = "HTTP /predictions"  # the calls' `method` in the server's metrics, beside gRPC's
# The status a call has in the metrics unless it reaches another: the client went away.
_GAVE_UP = "CANCELLED"
# HTTP has no standard deadline. These two give a request one, as gRPC's grpc-timeout does: our
# own in seconds, and the one Envoy sends upstream with the route's timeout, so a request behind
# Envoy is dropped when Envoy stops waiting for it rather than computed for nobody.
TIMEOUT_HEADER = "X-Request-Timeout"
ENVOY_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"


class CallMetrics(Protocol):
    """What the front end reports (the server's metrics, as the gRPC servicer reports them)."""

    def call_started(self) -> None: ...

    def call_finished(self, method: str, code: str, seconds: float) -> None: ...


class NoCallMetrics:
    def call_started(self) -> None:
        pass

    def call_finished(self, method: str, code: str, seconds: float) -> None:
        pass


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT -> (host, port); ValueError says what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http-listen {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def request_timeout(headers: Mapping[str, str]) -> float | None:
    """Seconds the client waits for this request (the smaller of the two headers), or None;
    BadRequest says which header is malformed."""
    found: list[float] = []
    for name, scale in ((TIMEOUT_HEADER, 1.0), (ENVOY_TIMEOUT_HEADER, 1000.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            seconds = math.nan
        if not 0 < seconds < math.inf:  # also refuses nan
            unit = "seconds" if scale == 1.0 else "milliseconds"
            raise BadRequest(f"header {name}: {value!r} is not a positive number of {unit}")
        found.append(seconds)
    return min(found, default=None)


class HttpFrontEnd:
    """Bound before the model loads, like the gRPC ports: /ping says Unhealthy and predictions
    get 503 until `ready` hands it the service, and again once `stop` begins."""

    def __init__(
        self,
        addresses: Sequence[str],
        max_body_bytes: int,
        *,
        grace_seconds: float = 10.0,
        reuse_port: bool = False,
        tls: HttpTls | None = None,
        authorize: Callable[[str | None], bool] | None = None,
        serving: Callable[[], bool] | None = None,
        metrics: CallMetrics | None = None,
    ) -> None:
        self.addresses = list(addresses)
        self.max_body_bytes = max_body_bytes
        self.grace_seconds = grace_seconds
        self.reuse_port = reuse_port
        self.tls = tls
        self.authorize = authorize  # None: no token asked for
        self.healthy = serving  # None: serving whenever ready and not draining
        self.metrics = metrics or NoCallMetrics()
        self.service: DetectionService[Any] | None = None
        self.draining = False
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        for path in ("/predictions/{model_name}", "/predictions/{model_name}/{version}"):
            for method in ("PUT", "POST"):
                app.router.add_route(method, path, self.predict, expect_handler=self._expect)
        app.router.add_get("/ping", self.ping)
        return app

    async def start(self) -> None:
        """Bind every address; OSError (an address taken) or ValueError (a malformed one)."""
        self._runner = web.AppRunner(
            self.app(), handle_signals=False, access_log=None, shutdown_timeout=self.grace_seconds
        )
        await self._runner.setup()
        try:
            for address in self.addresses:
                host, port = split_address(address)
                context = self.tls.context if self.tls is not None else None
                site = web.TCPSite(self._runner, host, port, ssl_context=context, reuse_port=self.reuse_port)
                await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        log.info("http_listening", addresses=self.addresses, tls=self.tls is not None)

    def reload(self) -> None:
        """SIGHUP: re-read the TLS files; a broken one is logged and the ones in force stay."""
        if self.tls is None:
            return
        try:
            self.tls.reload()
        except HttpTlsError as exc:
            log.error("reload_failed", what="http_tls", error=str(exc))
        else:
            log.info("reloaded", what="http_tls")

    def ready(self, service: DetectionService[Any]) -> None:
        self.service = service

    async def stop(self) -> None:
        """Stop listening, answer new requests on open connections 503, and let those in flight
        finish within the grace seconds (then they are cut). The service is closed by the caller,
        after this returns."""
        self.draining = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def serving(self) -> bool:
        ready = self.service is not None and not self.draining
        return ready and (self.healthy is None or self.healthy())

    async def ping(self, request: web.Request) -> web.Response:
        status, body = ping_body(self.serving)
        return web.Response(status=status, body=body, content_type=JSON)

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue` (curl sends it for bodies over 1 MiB): a body declared over the
        limit is refused before the client sends it; any other gets the go-ahead."""
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            self.metrics.call_started()  # `predict` never runs for it: counted here
            response, code = self._failure(request, self._too_large(declared))
            self.metrics.call_finished(METHOD, code, 0.0)
            return response
        if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the interim response is not part of the answer's size
        return None

    async def predict(self, request: web.Request) -> web.StreamResponse:
        self.metrics.call_started()
        started, code = time.perf_counter(), _GAVE_UP
        try:
            response, code = await self._predict(request)
            return response
        finally:
            self.metrics.call_finished(METHOD, code, time.perf_counter() - started)

    async def _predict(self, request: web.Request) -> tuple[web.Response, str]:
        """The answer, and its status as the metrics name it (gRPC's code names)."""
        if self.authorize is not None and not self.authorize(request.headers.get("Authorization")):
            why = "no" if "Authorization" not in request.headers else "a wrong"
            message = f"this server needs `Authorization: Bearer <token>`; this request sent {why} token"
            status = HTTPStatus.UNAUTHORIZED
            body = error_json(status, "Unauthenticated", message)
            return web.Response(status=status, body=body, content_type=JSON), "UNAUTHENTICATED"
        try:
            service = self.service
            if service is None or self.draining:
                raise Unavailable(
                    "the server is shutting down"
                    if self.draining
                    else "the model is still loading; wait for GET /ping to answer Healthy"
                )
            timeout = request_timeout(request.headers)
            deadline = None if timeout is None else time.perf_counter() + timeout
            try:
                # The body's upload counts against the timeout too, as it does for a gRPC deadline.
                async with asyncio.timeout(timeout):
                    image = await self._read_image(request)
                    detection = await service.detect(image, None, deadline)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"the request's timeout of {timeout:g} s passed before its answer was ready"
                ) from None
        except DetectError as exc:
            return self._failure(request, exc)
        except Exception:
            log.exception("request_crashed", transport="http", path=request.path)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            body = error_json(status, "InternalError", "internal error; see the server log")
            return web.Response(status=status, body=body, content_type=JSON), Code.INTERNAL.value
        return web.Response(body=faces_body(detection), content_type=JSON), "OK"

    async def _read_image(self, request: web.Request) -> EncodedImage:
        """The body, read chunk by chunk and refused as soon as it passes the limit (never
        buffered past it, whatever Content-Length said or a chunked body turns out to hold)."""
        if request.content_type.startswith("multipart/"):
            raise BadRequest(
                "a multipart form is not accepted: send the image bytes as the body "
                "(curl -T image.jpg URL, or curl --data-binary @image.jpg URL)"
            )
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            raise self._too_large(declared)
        chunks, total = [], 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            if total > self.max_body_bytes:
                raise self._too_large(None, total)
            chunks.append(chunk)
        if total == 0:
            raise BadRequest(
                "the request body is empty: send the image bytes (JPEG or PNG) as the body, "
                "e.g. curl -T image.jpg URL"
            )
        return EncodedImage(b"".join(chunks))

    def _too_large(self, declared: int | None, read: int = 0) -> BodyTooLarge:
        size = f"of {declared} bytes" if declared is not None else f"over {read} bytes (and counting)"
        return BodyTooLarge(
            f"request body {size} is larger than the server's max (--max-message-bytes {self.max_body_bytes})"
        )

    def _failure(self, request: web.Request, error: DetectError) -> tuple[web.Response, str]:
        status = http_status(error)
        log.warning(
            "request_failed",
            transport="http",
            path=request.path,
            status=int(status),
            code=error.code.value,
            error=error.message,
            peer=request.remote,
        )
        if isinstance(error, BodyTooLarge) and self.service is not None:
            self.service.record_rejection(error)  # the service never saw it; count it as gRPC does
        response = web.Response(status=status, body=error_body(error), content_type=JSON)
        wait = retry_after(error)
        if wait is not None:
            response.headers["Retry-After"] = wait  # as gRPC's trailers carry retry-after-ms
        if isinstance(error, BodyTooLarge):
            response.force_close()  # the rest of the body is never read: end the connection
        return response, error.code.value
