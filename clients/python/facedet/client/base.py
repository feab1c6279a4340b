"""What the blocking and the asyncio client share: the target, the per-call defaults, how a
detect call's request is built and how a failed call becomes a FaceDetectorError. Transport
(channel, stub, awaiting) stays in each client."""

from __future__ import annotations

import os

import grpc

from facedet.client.channel import with_default_port
from facedet.client.connect import ConnectBudget, connect_budget, lost_server, probe_failure
from facedet.client.discovery import dialable, dialed_host
from facedet.client.errors import FaceDetectorError, NoAnswerError
from facedet.client.images import ImageLike, PixelFormat, build_request
from facedet.client.messages import DetectionOptions
from facedet.v1 import face_detector_pb2 as pb


class ClientDefaults:
    def __init__(
        self,
        target: str,
        *,
        timeout: float | None,
        connect_timeout: float | None,
        options: DetectionOptions | None,
        pixel_format: PixelFormat,
        discover_front_ends: bool = False,
        wait_for_ready: bool = False,
    ) -> None:
        self.target = with_default_port(target)
        # The front ends found through GetModelInfo (see discovery.py) that calls now spread
        # over; empty while calls go to `target` itself.
        self.front_ends: list[str] = []
        self._discovery_pending = discover_front_ends and dialed_host(self.target) is not None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.options = options
        self.pixel_format: PixelFormat = pixel_format
        # Whether a server has answered since the last call that found none (see connect.py).
        self._answered = False
        # gRPC's per-call flag: True queues a call while no server is reachable (until its
        # timeout) instead of failing it at once. None, not False, otherwise: an explicit False
        # would override the waitForReady a balanced target's service config sets.
        self._wait: bool | None = True if wait_for_ready else None

    def _options(self, options: DetectionOptions | None) -> pb.DetectionOptions | None:
        chosen = options if options is not None else self.options
        return chosen.to_proto() if chosen is not None else None

    def _detect_request(
        self,
        image: ImageLike,
        options: DetectionOptions | None,
        frame_id: int,
        pixel_format: PixelFormat | None,
    ) -> pb.DetectFacesRequest:
        return build_request(
            image,
            options=self._options(options),
            frame_id=frame_id,
            pixel_format=pixel_format or self.pixel_format,
        )

    def _discovered(self, info: pb.ModelInfo | None, error: grpc.RpcError | None) -> list[str]:
        """The front ends to check for an answer, from GetModelInfo's answer (or error): none
        unless at least two. Discovery ends here unless the server could not answer yet."""
        if error is not None:
            code = FaceDetectorError.from_rpc_error(error).code
            self._discovery_pending = code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # try again
            return []
        self._discovery_pending = False
        found = dialable(info.front_end_addresses, self.target) if info is not None else []
        return found if len(found) > 1 else []

    def _probe_budget(self, call_timeout: float | None) -> ConnectBudget | None:
        """The bound on a health probe before the next call; None: no probe needed."""
        return None if self._answered else connect_budget(call_timeout, self.connect_timeout)

    def _probe_failed(self, error: grpc.RpcError, budget: ConnectBudget) -> None:
        """Raise what a failed probe means, or return where a server did answer."""
        failure = probe_failure(FaceDetectorError.from_rpc_error(error), budget, self.target)
        if failure is not None:
            raise failure from None

    def _call_error(self, error: grpc.RpcError, call_timeout: float | None) -> FaceDetectorError:
        failed = FaceDetectorError.from_rpc_error(error)
        if lost_server(failed):
            self._answered = False
        if failed.code == "DEADLINE_EXCEEDED" and call_timeout is not None:
            return NoAnswerError(failed.code, self.target, call_timeout)
        return failed

    def _stream_error(
        self, error: grpc.RpcError, call_timeout: float | None, received: int
    ) -> FaceDetectorError:
        failed = self._call_error(error, call_timeout)
        if isinstance(failed, NoAnswerError) and received:  # it did answer, then ran out of time
            return FaceDetectorError(
                failed.code, f"the stream to {self.target} ran past its timeout of {call_timeout:g} s"
            )
        return failed


def naming_file(image: ImageLike, error: FaceDetectorError) -> FaceDetectorError:
    """The server's INVALID_ARGUMENT for an image sent from a file, with the file named."""
    if error.code != "INVALID_ARGUMENT" or not isinstance(image, str | os.PathLike):
        return error
    return FaceDetectorError(error.code, f"{os.fspath(image)}: {error.message}")
