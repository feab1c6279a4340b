"""The blocking client."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator
from types import TracebackType

import grpc

from facedet.client.base import ClientDefaults
from facedet.client.channel import (
    HEALTH_METHOD,
    ChannelOptions,
    decode_health_response,
    encode_health_request,
)
from facedet.client.channel import channel_options as make_channel_options
from facedet.client.errors import FaceDetectorError
from facedet.client.images import Frame, ImageLike, PixelFormat, frame_request
from facedet.client.messages import Detection, DetectionOptions, ModelInfo
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc


class FaceDetectorClient(ClientDefaults):
    """Blocking client for one server. `target` is `host:port` or `unix:///path/to.sock`.

    `timeout` (seconds) bounds each unary call (streams take their own, as they may run for
    long); `options` are the DetectionOptions used when a call passes none.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = None,
        options: DetectionOptions | None = None,
        channel_options: ChannelOptions = (),
        pixel_format: PixelFormat = "RGB",
    ) -> None:
        super().__init__(target, timeout=timeout, options=options, pixel_format=pixel_format)
        self._channel = grpc.insecure_channel(target, options=make_channel_options(channel_options, target))
        self._stub = pb_grpc.FaceDetectorStub(self._channel)
        self._health = self._channel.unary_unary(HEALTH_METHOD, None, None)

    def detect(
        self,
        image: ImageLike,
        options: DetectionOptions | None = None,
        frame_id: int = 0,
        *,
        pixel_format: PixelFormat | None = None,
    ) -> Detection:
        """Faces in one image (a path, JPEG/PNG bytes, or an RGB/BGR/gray uint8 array)."""
        request = self._detect_request(image, options, frame_id, pixel_format)
        return Detection.from_proto(self.detect_request(request))

    def detect_request(self, request: pb.DetectFacesRequest) -> pb.DetectFacesResponse:
        """The raw call, for callers that build their own protos."""
        try:
            response: pb.DetectFacesResponse = self._stub.DetectFaces(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise FaceDetectorError.from_rpc_error(exc) from None
        return response

    def stream(
        self,
        frames: Iterable[ImageLike | Frame],
        options: DetectionOptions | None = None,
        *,
        pixel_format: PixelFormat | None = None,
        timeout: float | None = None,
    ) -> Generator[Detection, None, None]:
        """Detections for `frames`, in order, as they come back; several frames are in flight at
        once. Frame ids default to each frame's position (0, 1, ...); wrap a frame in `Frame` to
        choose its id. A frame the server rejects yields a Detection with `error` set; a frame
        that cannot be read here (missing file, bad array) raises, after the detections of the
        frames before it. Closing the generator early cancels the call."""
        proto_options = self._options(options)
        fmt = pixel_format or self.pixel_format
        failure: list[BaseException] = []

        def requests() -> Iterator[pb.DetectFacesRequest]:
            # gRPC pulls these on its own thread and would swallow an exception into a bare
            # CANCELLED; keep it for the caller and end the stream cleanly instead.
            try:
                for index, item in enumerate(frames):
                    yield frame_request(item, index, proto_options, fmt)
            except Exception as exc:
                failure.append(exc)

        call = self._stub.StreamDetectFaces(requests(), timeout=timeout)
        try:
            for response in call:
                yield Detection.from_proto(response)
        except grpc.RpcError as exc:
            raise FaceDetectorError.from_rpc_error(exc) from None
        finally:
            call.cancel()  # no-op once finished; stops the call if the caller stopped early
        if failure:
            raise failure[0]

    def model_info(self) -> ModelInfo:
        try:
            info = self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise FaceDetectorError.from_rpc_error(exc) from None
        return ModelInfo.from_proto(info)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The health check's status: "SERVING", "NOT_SERVING" (e.g. model still loading), ..."""
        try:
            data: bytes = self._health(encode_health_request(service), timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise FaceDetectorError.from_rpc_error(exc) from None
        return decode_health_response(data)

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Block until the server reports SERVING; FaceDetectorError(DEADLINE_EXCEEDED) if not."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = self.health(timeout=max(min(1.0, deadline - time.monotonic()), 0.01))
                if last == "SERVING":
                    return
            except FaceDetectorError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise FaceDetectorError("DEADLINE_EXCEEDED", f"{self.target} not SERVING after {timeout} s ({last})")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FaceDetectorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
