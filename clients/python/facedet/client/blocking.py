"""The blocking client."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterable, Iterator
from types import TracebackType

import grpc

from facedet.client.base import ClientDefaults, naming_file
from facedet.client.channel import (
    HEALTH_METHOD,
    ChannelOptions,
    ChannelSecurity,
    decode_health_response,
    encode_health_request,
    open_channel,
)
from facedet.client.channel import channel_options as make_channel_options
from facedet.client.connect import DEFAULT_CONNECT_TIMEOUT, remaining
from facedet.client.discovery import list_target
from facedet.client.errors import FaceDetectorError
from facedet.client.images import DEFAULT_PIXEL_FORMAT, Frame, ImageLike, PixelFormat, frame_request
from facedet.client.messages import Detection, DetectionOptions, ModelInfo
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc


def _answers(address: str, seconds: float) -> bool:
    """Whether a health check at `address` gets an answer (any status) within `seconds`."""
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary(HEALTH_METHOD, None, None)
        try:
            check(encode_health_request(""), timeout=seconds)
        except grpc.RpcError as exc:
            return FaceDetectorError.from_rpc_error(exc).code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    return True


class FaceDetectorClient(ClientDefaults):
    """Blocking client for one server.

    `target` is `host:port` (a host alone means port 50051), `unix:///path/to.sock`, or a list of
    front ends (`ipv4:HOST:PORT,HOST:PORT`, `unix:/a.sock,/b.sock`), spread over by round_robin.
    `timeout` (seconds) bounds each unary call, connecting included (streams take their own, as
    they may run for long). `connect_timeout` bounds the wait for the server to answer at all
    before any call: past it, NoAnswerError (code UNAVAILABLE) "no FaceDetector answered at
    ADDR within S s"; None leaves that to gRPC. `options` are the DetectionOptions used when a
    call passes none; `pixel_format` is the channel order of HxWx3 arrays when a call gives none
    (see `detect`).

    `discover_front_ends` (on by default): when `target` is one TCP address of a server with
    several front-end processes, the first call asks GetModelInfo for their own addresses and,
    where at least two answer, later calls spread over them (round_robin; `front_ends` lists
    them), else stay on `target`. Off with TLS, whose certificate names the host dialed.

    `wait_for_ready` (off by default): every call, the health probes before calls included,
    waits for a server to be reachable (bounded by its timeout and, for the probe,
    `connect_timeout`) instead of failing at once with UNAVAILABLE when none listens, so a
    client rides out a server restarting on the same address. It does not re-send a call that
    was in flight on a server that died, nor wait out a server still loading its model (that
    answers UNAVAILABLE): see the client README. Balanced targets (several front ends, dns:)
    wait for ready anyway, through their service config.
    """

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
        self._discovery_lock = threading.Lock()
        self._retired: list[grpc.Channel] = []  # replaced by the front ends' channel; closed with it
        self._open(self.target)

    def _open(self, target: str) -> None:
        settings = make_channel_options(self._extra_options, target)
        self._channel = open_channel(target, settings, self._security)
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
        """Faces in one image: a path, JPEG/PNG bytes, or a uint8 numpy array.

        A path's JPEG or PNG is sent as it is; other formats (BMP, TIFF, WebP, GIF, ...) are
        re-encoded here (needs OpenCV). A file that cannot be sent (missing, a folder, empty, not
        an image) raises FaceDetectorError INVALID_ARGUMENT naming it, before any call; the
        server's INVALID_ARGUMENT for a file's bytes names the file too.

        An array is HxW or HxWx1 (GRAY8), or HxWx3 in `pixel_format` order: "RGB8" or "BGR8".
        **Without `pixel_format`, HxWx3 arrays are taken as RGB8** (the client's default), but
        OpenCV (`cv2.imread`, `cv2.VideoCapture`) gives BGR: pass `pixel_format="BGR8"` for
        those, or red and blue are swapped and the faces found differ.
        """
        request = self._detect_request(image, options, frame_id, pixel_format)
        try:
            return Detection.from_proto(self.detect_request(request))
        except FaceDetectorError as exc:
            raise naming_file(image, exc) from None

    def detect_request(self, request: pb.DetectFacesRequest) -> pb.DetectFacesResponse:
        """The raw call, for callers that build their own protos."""
        started = time.monotonic()
        self._probe(self.timeout)
        try:
            response: pb.DetectFacesResponse = self._stub.DetectFaces(
                request, timeout=remaining(self.timeout, started), wait_for_ready=self._wait
            )
        except grpc.RpcError as exc:
            raise self._call_error(exc, self.timeout) from None
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
        choose its id. Arrays are read as in `detect` (`pixel_format`: "RGB8" unless given).
        A frame the server rejects yields a Detection with `error` set; a frame that cannot be
        read here (missing file, bad array) raises, after the detections of the frames before
        it. `timeout` bounds the whole stream, connecting included. Closing the generator early
        cancels the call."""
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

        started = time.monotonic()
        self._probe(timeout)
        call = self._stub.StreamDetectFaces(
            requests(), timeout=remaining(timeout, started), wait_for_ready=self._wait
        )
        received = 0
        try:
            for response in call:
                received += 1
                yield Detection.from_proto(response)
        except grpc.RpcError as exc:
            raise self._stream_error(exc, timeout, received) from None
        finally:
            call.cancel()  # no-op once finished; stops the call if the caller stopped early
        if failure:
            raise failure[0]

    def model_info(self) -> ModelInfo:
        started = time.monotonic()
        self._probe(self.timeout)
        try:
            info = self._stub.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=remaining(self.timeout, started), wait_for_ready=self._wait
            )
        except grpc.RpcError as exc:
            raise self._call_error(exc, self.timeout) from None
        return ModelInfo.from_proto(info)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The health check's status: "SERVING", "NOT_SERVING" (e.g. model still loading), ..."""
        timeout = timeout or self.timeout
        budget = self._probe_budget(timeout)  # this call is its own probe
        try:
            data: bytes = self._health(
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

    def _probe(self, call_timeout: float | None) -> None:
        """Until a server has answered: a health check, bounded by the connect timeout. Then,
        once, the front ends' own addresses (`discover_front_ends`)."""
        budget = self._probe_budget(call_timeout)
        if budget is not None:
            try:
                self._health(encode_health_request(""), timeout=budget.seconds, wait_for_ready=self._wait)
            except grpc.RpcError as exc:
                self._probe_failed(exc, budget)
            self._answered = True
        if self._discovery_pending:
            self._discover(budget.seconds if budget else self.connect_timeout or DEFAULT_CONNECT_TIMEOUT)

    def _discover(self, seconds: float) -> None:
        with self._discovery_lock:
            if not self._discovery_pending:
                return
            info, error = None, None
            try:
                info = self._stub.GetModelInfo(
                    pb.GetModelInfoRequest(), timeout=seconds, wait_for_ready=self._wait
                )
            except grpc.RpcError as exc:
                error = exc
            found = [a for a in self._discovered(info, error) if _answers(a, min(seconds, 2.0))]
            if len(found) < 2:
                return
            self._retired.append(self._channel)  # calls in flight on it finish there
            self._open(list_target(found))
            self.front_ends = found

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
        for channel in [*self._retired, self._channel]:
            channel.close()

    def __enter__(self) -> FaceDetectorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
