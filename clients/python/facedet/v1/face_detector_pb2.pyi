from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_GRAY8: _ClassVar[PixelFormat]
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_RGB8: PixelFormat
PIXEL_FORMAT_BGR8: PixelFormat
PIXEL_FORMAT_GRAY8: PixelFormat

class DetectFacesRequest(_message.Message):
    __slots__ = ("encoded", "raw", "options", "frame_id")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    options: DetectionOptions
    frame_id: int
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., options: _Optional[_Union[DetectionOptions, _Mapping]] = ..., frame_id: _Optional[int] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("width", "height", "format", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    format: PixelFormat
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[PixelFormat, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class DetectionOptions(_message.Message):
    __slots__ = ("min_confidence", "iou_threshold", "max_faces", "min_face_size", "ignore_exif_orientation", "live")
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_FACES_FIELD_NUMBER: _ClassVar[int]
    MIN_FACE_SIZE_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EXIF_ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    min_confidence: float
    iou_threshold: float
    max_faces: int
    min_face_size: float
    ignore_exif_orientation: bool
    live: bool
    def __init__(self, min_confidence: _Optional[float] = ..., iou_threshold: _Optional[float] = ..., max_faces: _Optional[int] = ..., min_face_size: _Optional[float] = ..., ignore_exif_orientation: _Optional[bool] = ..., live: _Optional[bool] = ...) -> None: ...

class DetectFacesResponse(_message.Message):
    __slots__ = ("faces", "image_width", "image_height", "frame_id", "timing", "error", "dropped")
    FACES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    image_width: int
    image_height: int
    frame_id: int
    timing: Timing
    error: _status_pb2.Status
    dropped: bool
    def __init__(self, faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., frame_id: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., dropped: _Optional[bool] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("decode_us", "queue_us", "inference_us", "postprocess_us", "total_us", "batch_size")
    DECODE_US_FIELD_NUMBER: _ClassVar[int]
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_US_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    decode_us: int
    queue_us: int
    inference_us: int
    postprocess_us: int
    total_us: int
    batch_size: int
    def __init__(self, decode_us: _Optional[int] = ..., queue_us: _Optional[int] = ..., inference_us: _Optional[int] = ..., postprocess_us: _Optional[int] = ..., total_us: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("box", "confidence", "landmarks")
    BOX_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    box: BoundingBox
    confidence: float
    landmarks: Landmarks
    def __init__(self, box: _Optional[_Union[BoundingBox, _Mapping]] = ..., confidence: _Optional[float] = ..., landmarks: _Optional[_Union[Landmarks, _Mapping]] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ...) -> None: ...

class Landmarks(_message.Message):
    __slots__ = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    LEFT_EYE_FIELD_NUMBER: _ClassVar[int]
    RIGHT_EYE_FIELD_NUMBER: _ClassVar[int]
    NOSE_FIELD_NUMBER: _ClassVar[int]
    MOUTH_LEFT_FIELD_NUMBER: _ClassVar[int]
    MOUTH_RIGHT_FIELD_NUMBER: _ClassVar[int]
    left_eye: Point
    right_eye: Point
    nose: Point
    mouth_left: Point
    mouth_right: Point
    def __init__(self, left_eye: _Optional[_Union[Point, _Mapping]] = ..., right_eye: _Optional[_Union[Point, _Mapping]] = ..., nose: _Optional[_Union[Point, _Mapping]] = ..., mouth_left: _Optional[_Union[Point, _Mapping]] = ..., mouth_right: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "input_width", "input_height", "backend", "execution_provider", "version", "default_options", "limits", "model_sha256", "max_batch", "max_delay_ms", "front_end_addresses", "engines")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    FRONT_END_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
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
    front_end_addresses: _containers.RepeatedScalarFieldContainer[str]
    engines: _containers.RepeatedCompositeFieldContainer[EngineInfo]
    def __init__(self, name: _Optional[str] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., backend: _Optional[str] = ..., execution_provider: _Optional[str] = ..., version: _Optional[str] = ..., default_options: _Optional[_Union[DetectionOptions, _Mapping]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., model_sha256: _Optional[str] = ..., max_batch: _Optional[int] = ..., max_delay_ms: _Optional[float] = ..., front_end_addresses: _Optional[_Iterable[str]] = ..., engines: _Optional[_Iterable[_Union[EngineInfo, _Mapping]]] = ...) -> None: ...

class EngineInfo(_message.Message):
    __slots__ = ("name", "device", "serving")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    name: str
    device: str
    serving: bool
    def __init__(self, name: _Optional[str] = ..., device: _Optional[str] = ..., serving: _Optional[bool] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_bytes", "max_pixels", "max_faces", "max_queue")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_FACES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_pixels: int
    max_faces: int
    max_queue: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_pixels: _Optional[int] = ..., max_faces: _Optional[int] = ..., max_queue: _Optional[int] = ...) -> None: ...
