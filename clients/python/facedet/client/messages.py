"""Plain dataclasses for everything the API returns, and the one place they meet the protos.

Callers get immutable, typed values they can keep, compare and hash; `from_proto`/`to_proto` are
the only functions that know the wire types, and `to_proto(from_proto(m)) == m` holds for every
message the server sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import status_pb2

from facedet.v1 import face_detector_pb2 as pb

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_CODE_NUMBERS = {name: number for number, name in _CODE_NAMES.items()}


def code_name(number: int) -> str:
    """gRPC status number -> name, e.g. 3 -> "INVALID_ARGUMENT" (unknown numbers stay numeric)."""
    return _CODE_NAMES.get(number, str(number))


def code_number(name: str) -> int:
    return _CODE_NUMBERS[name] if name in _CODE_NUMBERS else int(name)


@dataclass(frozen=True)
class Point:
    x: float
    y: float

    def to_proto(self) -> pb.Point:
        return pb.Point(x=self.x, y=self.y)

    @classmethod
    def from_proto(cls, message: pb.Point) -> Point:
        return cls(message.x, message.y)


@dataclass(frozen=True)
class BoundingBox:
    """Corners in pixels of the image as sent; (x_min, y_min) is the top-left."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min

    def to_proto(self) -> pb.BoundingBox:
        return pb.BoundingBox(x_min=self.x_min, y_min=self.y_min, x_max=self.x_max, y_max=self.y_max)

    @classmethod
    def from_proto(cls, message: pb.BoundingBox) -> BoundingBox:
        return cls(message.x_min, message.y_min, message.x_max, message.y_max)


@dataclass(frozen=True)
class Landmarks:
    """ "left"/"right" as the viewer sees the image (see the .proto): `left_eye` is the subject's
    right eye on a frontal face."""

    left_eye: Point
    right_eye: Point
    nose: Point
    mouth_left: Point
    mouth_right: Point

    def points(self) -> tuple[Point, Point, Point, Point, Point]:
        return (self.left_eye, self.right_eye, self.nose, self.mouth_left, self.mouth_right)

    def to_proto(self) -> pb.Landmarks:
        return pb.Landmarks(
            left_eye=self.left_eye.to_proto(),
            right_eye=self.right_eye.to_proto(),
            nose=self.nose.to_proto(),
            mouth_left=self.mouth_left.to_proto(),
            mouth_right=self.mouth_right.to_proto(),
        )

    @classmethod
    def from_proto(cls, message: pb.Landmarks) -> Landmarks:
        return cls(
            Point.from_proto(message.left_eye),
            Point.from_proto(message.right_eye),
            Point.from_proto(message.nose),
            Point.from_proto(message.mouth_left),
            Point.from_proto(message.mouth_right),
        )


@dataclass(frozen=True)
class Face:
    box: BoundingBox
    confidence: float
    landmarks: Landmarks

    def to_proto(self) -> pb.Face:
        return pb.Face(
            box=self.box.to_proto(), confidence=self.confidence, landmarks=self.landmarks.to_proto()
        )

    @classmethod
    def from_proto(cls, message: pb.Face) -> Face:
        return cls(
            BoundingBox.from_proto(message.box),
            message.confidence,
            Landmarks.from_proto(message.landmarks),
        )


@dataclass(frozen=True)
class Timing:
    """Server-side microseconds per stage (see the Timing message)."""

    decode_us: int = 0
    queue_us: int = 0
    inference_us: int = 0
    postprocess_us: int = 0
    total_us: int = 0
    batch_size: int = 0

    def to_proto(self) -> pb.Timing:
        return pb.Timing(
            decode_us=self.decode_us,
            queue_us=self.queue_us,
            inference_us=self.inference_us,
            postprocess_us=self.postprocess_us,
            total_us=self.total_us,
            batch_size=self.batch_size,
        )

    @classmethod
    def from_proto(cls, message: pb.Timing) -> Timing:
        return cls(
            message.decode_us,
            message.queue_us,
            message.inference_us,
            message.postprocess_us,
            message.total_us,
            message.batch_size,
        )


@dataclass(frozen=True)
class Status:
    """Why one stream frame failed: the status a unary call would have failed with."""

    code: str  # gRPC status code name, e.g. "INVALID_ARGUMENT"
    message: str

    def to_proto(self) -> status_pb2.Status:
        return status_pb2.Status(code=code_number(self.code), message=self.message)

    @classmethod
    def from_proto(cls, message: status_pb2.Status) -> Status:
        return cls(code_name(message.code), message.message)


@dataclass(frozen=True)
class Detection:
    """Faces found in one image, most confident first; `error` is set only for a stream frame
    that failed (and then the other fields are empty)."""

    faces: tuple[Face, ...]
    image_width: int
    image_height: int
    frame_id: int = 0
    timing: Timing = field(default_factory=Timing)
    error: Status | None = None
    # A live-mode stream's frame the server skipped for a newer one (no faces, no error).
    dropped: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_proto(self) -> pb.DetectFacesResponse:
        message = pb.DetectFacesResponse(
            faces=[face.to_proto() for face in self.faces],
            image_width=self.image_width,
            image_height=self.image_height,
            frame_id=self.frame_id,
        )
        # Failed stream frames carry no timing; leaving it unset keeps the round trip exact.
        if self.timing != Timing():
            message.timing.CopyFrom(self.timing.to_proto())
        if self.error is not None:
            message.error.CopyFrom(self.error.to_proto())
        message.dropped = self.dropped
        return message

    @classmethod
    def from_proto(cls, message: pb.DetectFacesResponse) -> Detection:
        return cls(
            faces=tuple(Face.from_proto(face) for face in message.faces),
            image_width=message.image_width,
            image_height=message.image_height,
            frame_id=message.frame_id,
            timing=Timing.from_proto(message.timing),
            error=Status.from_proto(message.error) if message.HasField("error") else None,
            dropped=message.dropped,
        )


@dataclass(frozen=True)
class DetectionOptions:
    """Per-request knobs; 0 leaves a field to the server default (see ModelInfo.default_options)."""

    min_confidence: float = 0.0
    iou_threshold: float = 0.0
    max_faces: int = 0
    min_face_size: float = 0.0
    # The server detects in the upright picture a JPEG's EXIF orientation describes; True keeps
    # the pixels as stored (and the size reported is then the stored one).
    ignore_exif_orientation: bool = False
    # Streams only: the server keeps just the newest waiting frame and answers the ones it
    # skips with `dropped` (see the .proto), so a real-time source never waits on stale frames.
    live: bool = False

    def to_proto(self) -> pb.DetectionOptions:
        return pb.DetectionOptions(
            min_confidence=self.min_confidence,
            iou_threshold=self.iou_threshold,
            max_faces=self.max_faces,
            min_face_size=self.min_face_size,
            ignore_exif_orientation=self.ignore_exif_orientation,
            live=self.live,
        )

    @classmethod
    def from_proto(cls, message: pb.DetectionOptions) -> DetectionOptions:
        return cls(
            message.min_confidence,
            message.iou_threshold,
            message.max_faces,
            message.min_face_size,
            message.ignore_exif_orientation,
            message.live,
        )


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 0
    max_pixels: int = 0
    max_faces: int = 0
    max_queue: int = 0

    def to_proto(self) -> pb.Limits:
        return pb.Limits(
            max_message_bytes=self.max_message_bytes,
            max_pixels=self.max_pixels,
            max_faces=self.max_faces,
            max_queue=self.max_queue,
        )

    @classmethod
    def from_proto(cls, message: pb.Limits) -> Limits:
        return cls(message.max_message_bytes, message.max_pixels, message.max_faces, message.max_queue)


@dataclass(frozen=True)
class EngineInfo:
    """One engine process of the server (or the server itself): its device, whether it serves."""

    name: str
    device: str
    serving: bool

    def to_proto(self) -> pb.EngineInfo:
        return pb.EngineInfo(name=self.name, device=self.device, serving=self.serving)

    @classmethod
    def from_proto(cls, message: pb.EngineInfo) -> EngineInfo:
        return cls(message.name, message.device, message.serving)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_width: int
    input_height: int
    backend: str
    execution_provider: str
    version: str
    default_options: DetectionOptions
    limits: Limits
    model_sha256: str
    max_batch: int
    max_delay_ms: float
    # Each front end's own address (several front-end processes), and every engine process.
    front_end_addresses: tuple[str, ...] = ()
    engines: tuple[EngineInfo, ...] = ()

    def to_proto(self) -> pb.ModelInfo:
        return pb.ModelInfo(
            name=self.name,
            input_width=self.input_width,
            input_height=self.input_height,
            backend=self.backend,
            execution_provider=self.execution_provider,
            version=self.version,
            default_options=self.default_options.to_proto(),
            limits=self.limits.to_proto(),
            model_sha256=self.model_sha256,
            max_batch=self.max_batch,
            max_delay_ms=self.max_delay_ms,
            front_end_addresses=list(self.front_end_addresses),
            engines=[engine.to_proto() for engine in self.engines],
        )

    @classmethod
    def from_proto(cls, message: pb.ModelInfo) -> ModelInfo:
        return cls(
            name=message.name,
            input_width=message.input_width,
            input_height=message.input_height,
            backend=message.backend,
            execution_provider=message.execution_provider,
            version=message.version,
            default_options=DetectionOptions.from_proto(message.default_options),
            limits=Limits.from_proto(message.limits),
            model_sha256=message.model_sha256,
            max_batch=message.max_batch,
            max_delay_ms=message.max_delay_ms,
            front_end_addresses=tuple(message.front_end_addresses),
            engines=tuple(EngineInfo.from_proto(engine) for engine in message.engines),
        )
