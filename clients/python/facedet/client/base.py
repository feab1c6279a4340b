"""What the blocking and the asyncio client share: the target, the per-call defaults, and how a
detect call's request is built. Transport (channel, stub, awaiting) stays in each client."""

from __future__ import annotations

from facedet.client.images import ImageLike, PixelFormat, build_request
from facedet.client.messages import DetectionOptions
from facedet.v1 import face_detector_pb2 as pb


class ClientDefaults:
    def __init__(
        self,
        target: str,
        *,
        timeout: float | None,
        options: DetectionOptions | None,
        pixel_format: PixelFormat,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.options = options
        self.pixel_format: PixelFormat = pixel_format

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
