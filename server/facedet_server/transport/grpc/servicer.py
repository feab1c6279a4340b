"""The FaceDetector gRPC servicer: proto in, DetectionService, proto out. No logic of its own
beyond mapping errors to statuses, keeping stream responses in request order and refusing
messages over --max-message-bytes (visibly: gRPC core's own refusal is neither logged nor counted)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

import grpc
import structlog
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from facedet_server import __version__
from facedet_server.errors import Code, DeadlineExceeded, DetectError, Overloaded, Unavailable
from facedet_server.serving.service import DetectionService
from facedet_server.transport.grpc.messages import (
    detection_to_response,
    error_response,
    image_from_request,
    options_from_request,
)

log = structlog.get_logger("facedet.servicer")
Context = grpc.aio.ServicerContext[Any, Any]

# gRPC core's own receive limit sits this far above --max-message-bytes (twice it, at most this
# much more): a message a little over the limit reaches the servicer, which can log, count and
# refuse it, while the core still cuts one far over it from its length prefix, unbuffered.
CORE_MARGIN_MAX = 64 * 1024 * 1024
_INT32_MAX = 2**31 - 1  # gRPC's message length limits are C ints
# Wire bytes a DetectFacesRequest spends on everything but its image bytes, at most: field tags,
# length prefixes, RawImage's header, the options and frame_id at their longest (71 in all).
_NON_IMAGE_BYTES_MAX = 128


def core_receive_limit(max_message_bytes: int) -> int:
    """The `grpc.max_receive_message_length` for a server whose servicer enforces
    `max_message_bytes`; above it gRPC answers RESOURCE_EXHAUSTED before any code of ours runs."""
    margin = min(max_message_bytes, CORE_MARGIN_MAX)
    return min(max_message_bytes + margin, _INT32_MAX)


def _has_unknown_fields(message: Message) -> bool:
    return len(UnknownFieldSet(message)) > 0


def oversize_bytes(request: pb.DetectFacesRequest, limit: int) -> int | None:
    """The request's encoded size when it is over `limit`, else None. Encoding it (ByteSize)
    copies the whole message, about 1 ms per MiB, so it runs only where the image bytes cannot
    decide alone: near the limit, or with unknown fields (a newer client's), which count too."""
    image_bytes = len(request.encoded) + len(request.raw.data)
    unknown = (
        _has_unknown_fields(request)
        or (request.HasField("raw") and _has_unknown_fields(request.raw))
        or (request.HasField("options") and _has_unknown_fields(request.options))
    )
    if image_bytes + _NON_IMAGE_BYTES_MAX <= limit and not unknown:
        return None
    size = request.ByteSize()
    return size if size > limit else None


class CallMetrics(Protocol):
    """What the servicer reports (the server's metrics): each DetectFaces call and each stream
    frame, by method and status code name, the streams open, and live-mode frames dropped."""

    def call_started(self) -> None: ...

    def call_finished(self, method: str, code: str, seconds: float) -> None: ...

    def stream_opened(self) -> None: ...

    def stream_closed(self) -> None: ...

    def frame_dropped(self) -> None: ...


class NoCallMetrics:
    def call_started(self) -> None:
        pass

    def call_finished(self, method: str, code: str, seconds: float) -> None:
        pass

    def stream_opened(self) -> None:
        pass

    def stream_closed(self) -> None:
        pass

    def frame_dropped(self) -> None:
        pass


_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}
# A call ends with this code in the metrics unless it reaches another: the client gave up
# (or, past its deadline, DEADLINE_EXCEEDED: see _gave_up).
_GAVE_UP = grpc.StatusCode.CANCELLED.name
# Errors that overload produces by the thousand: counted (metrics, summary), not logged one by
# one, since writing a log line for each would spend the CPU the overload is short of.
_QUIET = (Overloaded, DeadlineExceeded)


class MessageTooLarge(DetectError):
    code = Code.RESOURCE_EXHAUSTED


def deadline_of(context: Context) -> float | None:
    """The call's deadline as a time.perf_counter() value; None when it has none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.perf_counter() + remaining


def _gave_up(context: Context) -> str:
    """The code of a call cancelled under us: its deadline's, when that has passed."""
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED.name if remaining is not None and remaining <= 0 else _GAVE_UP


def retry_metadata(retry_after_ms: int) -> tuple[tuple[str, str], ...]:
    """Trailing metadata of a refused call: when to retry. `retry-after-ms` for any client;
    `grpc-retry-pushback-ms` is the one gRPC's own retry policy (A6) obeys."""
    return (("retry-after-ms", str(retry_after_ms)), ("grpc-retry-pushback-ms", str(retry_after_ms)))


def dropped_response(frame_id: int) -> pb.DetectFacesResponse:
    return pb.DetectFacesResponse(frame_id=frame_id, dropped=True)


class FaceDetectorServicer(pb_grpc.FaceDetectorServicer):
    """Registered before the model loads (so ports open early); calls get UNAVAILABLE until
    `ready` hands it the service."""

    def __init__(self, stream_window: int, metrics: CallMetrics | None = None, max_streams: int = 0) -> None:
        self.service: DetectionService[Any] | None = None
        self.model_info = pb.ModelInfo()
        self.stream_window = stream_window
        self.max_streams = max_streams  # 0: no limit
        self.open_streams = 0
        self.metrics = metrics or NoCallMetrics()
        # The engines' states change (an engine restarts): asked at each GetModelInfo.
        self.engines: Callable[[], list[pb.EngineInfo]] | None = None

    def ready(self, service: DetectionService[Any], info: pb.ModelInfo) -> None:
        self.service, self.model_info = service, info

    def _refuse_oversize(self, request: pb.DetectFacesRequest, context: Context, rpc: str) -> None:
        """Raises MessageTooLarge, logged and counted, for a request over the limit ModelInfo
        advertises (gRPC core lets it through: see core_receive_limit). Before `ready` the call
        is refused as UNAVAILABLE anyway."""
        if self.service is None:
            return
        limit = self.model_info.limits.max_message_bytes
        size = oversize_bytes(request, limit)
        if size is None:
            return
        log.warning(
            "message_too_large",
            rpc=rpc,
            frame_id=request.frame_id,
            bytes=size,
            limit=limit,
            peer=context.peer(),
        )
        error = MessageTooLarge(
            f"request message of {size} bytes is larger than the server's max (--max-message-bytes {limit})"
        )
        self.service.record_rejection(error)
        raise error

    async def _detect(self, request: pb.DetectFacesRequest, deadline: float | None) -> pb.DetectFacesResponse:
        if self.service is None:
            raise Unavailable("the model is still loading; wait for the health check to report SERVING")
        image = image_from_request(request)
        detection = await self.service.detect(image, options_from_request(request), deadline)
        return detection_to_response(detection, request.frame_id)

    async def DetectFaces(self, request: pb.DetectFacesRequest, context: Context) -> pb.DetectFacesResponse:
        self.metrics.call_started()
        started, code = time.perf_counter(), _GAVE_UP
        try:
            try:
                self._refuse_oversize(request, context, "DetectFaces")
            except MessageTooLarge as exc:  # already logged
                code = exc.code.value
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
            try:
                response = await self._detect(request, deadline_of(context))
                code = grpc.StatusCode.OK.name
                return response
            except DetectError as exc:
                code = exc.code.value
                if isinstance(exc, Overloaded) and exc.retry_after_ms is not None:
                    context.set_trailing_metadata(retry_metadata(exc.retry_after_ms))
                if not isinstance(exc, _QUIET):
                    log.warning("request_failed", rpc="DetectFaces", code=exc.code.value, error=exc.message)
                await context.abort(getattr(grpc.StatusCode, exc.code.value), exc.message)
            except asyncio.CancelledError:
                code = _gave_up(context)
                raise
            except Exception:
                code = Code.INTERNAL.value
                log.exception("request_crashed", rpc="DetectFaces")
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
            raise AssertionError("unreachable: abort raises")
        finally:
            self.metrics.call_finished("DetectFaces", code, time.perf_counter() - started)

    async def _detect_frame(self, request: pb.DetectFacesRequest, context: Context) -> pb.DetectFacesResponse:
        self.metrics.call_started()
        started, code = time.perf_counter(), _GAVE_UP
        try:
            response = await self._answer_frame(request, context)
            code = _CODE_NAMES[response.error.code] if response.HasField("error") else "OK"
            return response
        except asyncio.CancelledError:
            code = _gave_up(context)
            raise
        finally:
            self.metrics.call_finished("StreamDetectFaces", code, time.perf_counter() - started)

    async def _answer_frame(self, request: pb.DetectFacesRequest, context: Context) -> pb.DetectFacesResponse:
        """One stream frame; failures become a response with `error`, never a broken stream."""
        try:
            self._refuse_oversize(request, context, "StreamDetectFaces")
        except MessageTooLarge as exc:  # already logged
            return error_response(exc.code.value, exc.message, request.frame_id)
        try:
            return await self._detect(request, deadline_of(context))
        except DetectError as exc:
            if not isinstance(exc, _QUIET):
                log.warning(
                    "frame_failed",
                    rpc="StreamDetectFaces",
                    frame_id=request.frame_id,
                    code=exc.code.value,
                    error=exc.message,
                )
            return error_response(exc.code.value, exc.message, request.frame_id)
        except Exception:
            log.exception("frame_crashed", rpc="StreamDetectFaces", frame_id=request.frame_id)
            return error_response(Code.INTERNAL.value, "internal error; see the server log", request.frame_id)

    async def StreamDetectFaces(
        self, request_iterator: AsyncIterator[pb.DetectFacesRequest], context: Context
    ) -> AsyncIterator[pb.DetectFacesResponse]:
        if self.max_streams and self.open_streams >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server is at its stream limit ({self.max_streams} open, --max-streams); "
                "retry later or on another instance",
            )
        # Frames start as they arrive, up to stream_window unanswered at once; responses are
        # awaited in arrival order, so pipelining never reorders. The window is the
        # backpressure: when it is full (a slow reader, a slow model), reading stops and HTTP/2
        # flow control stops the client. A frame's slot is taken before it is read and freed
        # only once its response is written, so nothing is buffered beyond the window.
        room = asyncio.Semaphore(self.stream_window)
        answers: asyncio.Queue[asyncio.Future[pb.DetectFacesResponse] | None] = asyncio.Queue()
        live: LiveFrames | None = None

        async def read() -> None:
            nonlocal live
            try:
                first = True
                while True:
                    await room.acquire()
                    request = await anext(request_iterator, None)
                    if request is None:
                        return
                    if first and request.options.live:
                        live = LiveFrames(lambda r: self._detect_frame(r, context), self.metrics)
                    first = False
                    if live is not None:
                        answers.put_nowait(live.add(request))
                    else:
                        answers.put_nowait(asyncio.create_task(self._detect_frame(request, context)))
            finally:
                answers.put_nowait(None)

        self.open_streams += 1
        self.metrics.stream_opened()
        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield await answer
                room.release()
            # Surfaces a read error as the call's status. A message over core_receive_limit is
            # not one: gRPC ends the request iterator as if the client had half-closed, then
            # fails the call with RESOURCE_EXHAUSTED itself, so no code of ours sees it.
            await reader
        finally:
            # Also on an abrupt disconnect (this generator is cancelled): nothing of the stream
            # outlives it.
            self.open_streams -= 1
            self.metrics.stream_closed()
            reader.cancel()
            if live is not None:
                live.cancel()
            while not answers.empty():
                leftover = answers.get_nowait()
                if leftover is not None:
                    leftover.cancel()

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Context) -> pb.ModelInfo:
        if self.service is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        if self.engines is None:
            return self.model_info
        info = pb.ModelInfo()
        info.CopyFrom(self.model_info)
        info.engines.extend(await asyncio.to_thread(self.engines))  # it may probe sockets
        return info


class LiveFrames:
    """A live-mode stream's frames (options.live): one runs at a time, and only the newest of
    those that arrive meanwhile waits; each older one is answered at once as dropped. Every
    frame gets its answer future from `add`, in arrival order; the last frame is never dropped,
    since only a newer frame displaces one."""

    def __init__(
        self,
        run: Callable[[pb.DetectFacesRequest], Coroutine[Any, Any, pb.DetectFacesResponse]],
        metrics: CallMetrics,
    ) -> None:
        self._run = run
        self._metrics = metrics
        self._running: asyncio.Task[pb.DetectFacesResponse] | None = None
        self._waiting: tuple[pb.DetectFacesRequest, asyncio.Future[pb.DetectFacesResponse]] | None = None

    def add(self, request: pb.DetectFacesRequest) -> asyncio.Future[pb.DetectFacesResponse]:
        answer: asyncio.Future[pb.DetectFacesResponse] = asyncio.get_running_loop().create_future()
        if self._running is None:
            self._start(request, answer)
            return answer
        if self._waiting is not None:
            older, its_answer = self._waiting
            its_answer.set_result(dropped_response(older.frame_id))
            self._metrics.frame_dropped()
        self._waiting = (request, answer)
        return answer

    def _start(self, request: pb.DetectFacesRequest, answer: asyncio.Future[pb.DetectFacesResponse]) -> None:
        task = asyncio.create_task(self._run(request))
        self._running = task
        task.add_done_callback(lambda done: self._finished(done, answer))

    def _finished(
        self, task: asyncio.Task[pb.DetectFacesResponse], answer: asyncio.Future[pb.DetectFacesResponse]
    ) -> None:
        self._running = None
        if answer.done():  # cancelled with the stream
            return
        if task.cancelled():
            answer.cancel()
            return
        error = task.exception()
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(task.result())
        if self._waiting is not None:
            request, waiting_answer = self._waiting
            self._waiting = None
            self._start(request, waiting_answer)

    def cancel(self) -> None:
        if self._running is not None:
            self._running.cancel()
        if self._waiting is not None:
            self._waiting[1].cancel()
            self._waiting = None


def model_info(service: DetectionService[Any], max_message_bytes: int, max_queue: int) -> pb.ModelInfo:
    pipeline = service.pipeline
    backend = pipeline.backend
    width, height = pipeline.preparer.input_shape
    defaults = service.defaults
    return pb.ModelInfo(
        name=pipeline.spec.name,
        input_width=width,
        input_height=height,
        backend=backend.name,
        execution_provider=backend.device,
        version=__version__,
        default_options=pb.DetectionOptions(
            min_confidence=defaults.min_confidence,
            iou_threshold=defaults.iou_threshold,
            max_faces=defaults.max_faces,
            min_face_size=defaults.min_face_size,
        ),
        limits=pb.Limits(
            max_message_bytes=max_message_bytes,
            max_pixels=pipeline.limits.max_pixels,
            max_faces=pipeline.limits.max_faces,
            max_queue=max_queue,
        ),
        model_sha256=backend.model_sha256,
        max_batch=service.batcher.config.max_batch,
        max_delay_ms=service.batcher.config.max_delay_ms,
    )
