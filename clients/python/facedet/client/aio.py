"""The asyncio client: the blocking client's methods as coroutines, on a grpc.aio channel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from types import TracebackType

import grpc

from facedet.client.base import ClientDefaults, naming_file
from facedet.client.channel import (
    HEALTH_METHOD,
    ChannelOptions,
    ChannelSecurity,
    decode_health_response,
    encode_health_request,
    open_aio_channel,
)
from facedet.client.channel import channel_options as make_channel_options
from facedet.client.connect import DEFAULT_CONNECT_TIMEOUT, remaining
from facedet.client.discovery import list_target
from facedet.client.errors import FaceDetectorError
from facedet.client.images import DEFAULT_PIXEL_FORMAT, Frame, ImageLike, PixelFormat, frame_request
from facedet.client.messages import Detection, DetectionOptions, ModelInfo
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc

Frames = Iterable[ImageLike | Frame] | AsyncIterable[ImageLike | Frame]


async def _answers(address: str, seconds: float) -> bool:
    """Whether a health check at `address` gets an answer (any status) within `seconds`."""
    async with grpc.aio.insecure_channel(address) as channel:
        check = channel.unary_unary(HEALTH_METHOD, None, None)
        try:
            await check(encode_health_request(""), timeout=seconds)
        except grpc.RpcError as exc:
            return FaceDetectorError.from_rpc_error(exc).code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    return True


class AsyncFaceDetectorClient(ClientDefaults):
    """Same API as FaceDetectorClient, async. Create it inside the event loop that uses it
    (grpc.aio binds a channel to the running loop), ideally as `async with`.
    `discover_front_ends` and `wait_for_ready` as in FaceDetectorClient."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        options: DetectionOptions | None = None,
        channel_options: ChannelOptions = (),
        pixel_format: PixelFormat = DEFAULT_PIXEL_FORMAT,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        token: str | None = None,
        discover_front_ends: bool = True,
        wait_for_ready: bool = False,
    ) -> None:
        # TLS and the token (see ChannelSecurity): root_certificates is the server's CA,
        # certificate_chain + private_key this client's certificate for mutual TLS.
        security = ChannelSecurity(root_certificates, certificate_chain, private_key, token)
        super().__init__(
            target,
            timeout=timeout,
            connect_timeout=connect_timeout,
            options=options,
            pixel_format=pixel_format,
            discover_front_ends=discover_front_ends and not security.uses_tls,
            wait_for_ready=wait_for_ready,
        )
        self._security = security
        self._extra_options = channel_options
        self._discovery_lock = asyncio.Lock()
        self._retired: list[grpc.aio.Channel] = []  # replaced by the front ends' channel
        self._open(self.target)

    def _open(self, target: str) -> None:
        settings = make_channel_options(self._extra_options, target)
        self._channel = open_aio_channel(target, settings, self._security)
        self._stub = pb_grpc.FaceDetectorStub(self._channel)
        self._health = self._channel.unary_unary(HEALTH_METHOD, None, None)

    async def detect(
        self,
        image: ImageLike,
        options: DetectionOptions | None = None,
        frame_id: int = 0,
        *,
        pixel_format: PixelFormat | None = None,
    ) -> Detection:
        """See FaceDetectorClient.detect: **HxWx3 arrays are RGB8 unless `pixel_format` says
        "BGR8"** (OpenCV's order)."""
        request = self._detect_request(image, options, frame_id, pixel_format)
        try:
            return Detection.from_proto(await self.detect_request(request))
        except FaceDetectorError as exc:
            raise naming_file(image, exc) from None

    async def detect_request(self, request: pb.DetectFacesRequest) -> pb.DetectFacesResponse:
        started = time.monotonic()
        await self._probe(self.timeout)
        try:
            response: pb.DetectFacesResponse = await self._stub.DetectFaces(
                request, timeout=remaining(self.timeout, started), wait_for_ready=self._wait
            )
        except grpc.RpcError as exc:
            raise self._call_error(exc, self.timeout) from None
        return response

    async def stream(
        self,
        frames: Frames,
        options: DetectionOptions | None = None,
        *,
        pixel_format: PixelFormat | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[Detection, None]:
        """See FaceDetectorClient.stream; `frames` may be a plain or an async iterable (a plain
        one is read on the event loop, so it should not block for long per frame)."""
        proto_options = self._options(options)
        fmt = pixel_format or self.pixel_format
        failure: list[BaseException] = []

        async def requests() -> AsyncIterator[pb.DetectFacesRequest]:
            # As in the blocking client: a local failure ends the stream cleanly and is raised
            # to the caller after the frames before it, rather than becoming a bare CANCELLED.
            try:
                index = 0
                async for item in _aiter(frames):
                    yield frame_request(item, index, proto_options, fmt)
                    index += 1
            except Exception as exc:
                failure.append(exc)

        started = time.monotonic()
        await self._probe(timeout)
        call = self._stub.StreamDetectFaces(
            requests(), timeout=remaining(timeout, started), wait_for_ready=self._wait
        )
        received = 0
        try:
            async for response in call:
                received += 1
                yield Detection.from_proto(response)
        except grpc.RpcError as exc:
            raise self._stream_error(exc, timeout, received) from None
        finally:
            call.cancel()
        if failure:
            raise failure[0]

    async def model_info(self) -> ModelInfo:
        started = time.monotonic()
        await self._probe(self.timeout)
        try:
            info = await self._stub.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=remaining(self.timeout, started), wait_for_ready=self._wait
            )
        except grpc.RpcError as exc:
            raise self._call_error(exc, self.timeout) from None
        return ModelInfo.from_proto(info)

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        timeout = timeout or self.timeout
        budget = self._probe_budget(timeout)  # this call is its own probe
        try:
            data: bytes = await self._health(
                encode_health_request(service),
                timeout=budget.seconds if budget else timeout,
                wait_for_ready=self._wait,
            )
        except grpc.RpcError as exc:
            if budget is not None:
                self._probe_failed(exc, budget)
            raise self._call_error(exc, timeout) from None
        self._answered = True
        return decode_health_response(data)

    async def _probe(self, call_timeout: float | None) -> None:
        """See FaceDetectorClient._probe."""
        budget = self._probe_budget(call_timeout)
        if budget is not None:
            try:
                await self._health(
                    encode_health_request(""), timeout=budget.seconds, wait_for_ready=self._wait
                )
            except grpc.RpcError as exc:
                self._probe_failed(exc, budget)
            self._answered = True
        if self._discovery_pending:
            seconds = budget.seconds if budget else self.connect_timeout or DEFAULT_CONNECT_TIMEOUT
            await self._discover(seconds)

    async def _discover(self, seconds: float) -> None:
        async with self._discovery_lock:
            if not self._discovery_pending:
                return
            info, error = None, None
            try:
                info = await self._stub.GetModelInfo(
                    pb.GetModelInfoRequest(), timeout=seconds, wait_for_ready=self._wait
                )
            except grpc.RpcError as exc:
                error = exc
            candidates = self._discovered(info, error)
            answers = await asyncio.gather(*(_answers(a, min(seconds, 2.0)) for a in candidates))
            found = [a for a, ok in zip(candidates, answers, strict=True) if ok]
            if len(found) < 2:
                return
            self._retired.append(self._channel)  # calls in flight on it finish there
            self._open(list_target(found))
            self.front_ends = found

    async def wait_until_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = await self.health(timeout=max(min(1.0, deadline - time.monotonic()), 0.01))
                if last == "SERVING":
                    return
            except FaceDetectorError as exc:
                last = str(exc)
            await asyncio.sleep(0.05)
        raise FaceDetectorError("DEADLINE_EXCEEDED", f"{self.target} not SERVING after {timeout} s ({last})")

    async def close(self) -> None:
        for channel in [*self._retired, self._channel]:
            await channel.close(None)

    async def __aenter__(self) -> AsyncFaceDetectorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def _aiter(frames: Frames) -> AsyncIterator[ImageLike | Frame]:
    if isinstance(frames, AsyncIterable):
        async for item in frames:
            yield item
    else:
        for item in frames:
            yield item
