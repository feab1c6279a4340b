"""The FaceDetector gRPC servicer: proto in, DetectionService, proto out. No logic of its own
beyond mapping errors to statuses and keeping stream responses in request order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc

from facedet_server import __version__
from facedet_server.errors import Code, DetectError, Unavailable
from facedet_server.serving.service import DetectionService
from facedet_server.transport.grpc.messages import (
    detection_to_response,
    error_response,
    image_from_request,
    options_from_request,
)

log = structlog.get_logger("facedet.servicer")
Context = grpc.aio.ServicerContext[Any, Any]


class FaceDetectorServicer(pb_grpc.FaceDetectorServicer):
    """Registered before the model loads (so ports open early); calls get UNAVAILABLE until
    `ready` hands it the service."""

    def __init__(self, stream_window: int) -> None:
        self.service: DetectionService[Any] | None = None
        self.model_info = pb.ModelInfo()
        self.stream_window = stream_window

    def ready(self, service: DetectionService[Any], info: pb.ModelInfo) -> None:
        self.service, self.model_info = service, info

    async def _detect(self, request: pb.DetectFacesRequest) -> pb.DetectFacesResponse:
        if self.service is None:
            raise Unavailable("the model is still loading; wait for the health check to report SERVING")
        image = image_from_request(request)
        detection = await self.service.detect(image, options_from_request(request))
        return detection_to_response(detection, request.frame_id)

    async def DetectFaces(self, request: pb.DetectFacesRequest, context: Context) -> pb.DetectFacesResponse:
        try:
            return await self._detect(request)
        except DetectError as exc:
            log.warning("request_failed", rpc="DetectFaces", code=exc.code.value, error=exc.message)
            await context.abort(getattr(grpc.StatusCode, exc.code.value), exc.message)
        except Exception:
            log.exception("request_crashed", rpc="DetectFaces")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("unreachable: abort raises")

    async def _detect_frame(self, request: pb.DetectFacesRequest) -> pb.DetectFacesResponse:
        """One stream frame; failures become a response with `error`, never a broken stream."""
        try:
            return await self._detect(request)
        except DetectError as exc:
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
        # Frames start as they arrive, up to stream_window at once; responses are awaited in
        # arrival order, so pipelining never reorders. The bounded queue is the backpressure:
        # when the window is full, reading stops and HTTP/2 flow control slows the client.
        pending: asyncio.Queue[asyncio.Task[pb.DetectFacesResponse] | None] = asyncio.Queue(
            self.stream_window
        )

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(asyncio.create_task(self._detect_frame(request)))
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader  # surfaces a read error (e.g. an over-size message) as the call's status
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Context) -> pb.ModelInfo:
        if self.service is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        return self.model_info


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
