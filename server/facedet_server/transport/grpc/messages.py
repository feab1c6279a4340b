"""The proto boundary: requests -> pipeline inputs, detections -> responses."""

from __future__ import annotations

from facedet.v1 import face_detector_pb2 as pb
from google.rpc import status_pb2

from facedet_server.errors import InvalidImage
from facedet_server.image.inputs import EncodedImage, ImageInput, RawFrame
from facedet_server.pipeline.base import Detection, Timing
from facedet_server.serving.service import RequestOptions

_PIXEL_FORMATS = {pb.PIXEL_FORMAT_RGB8: "RGB8", pb.PIXEL_FORMAT_BGR8: "BGR8", pb.PIXEL_FORMAT_GRAY8: "GRAY8"}
# gRPC status codes by name, as google.rpc.Status carries them (numbers are fixed by the spec).
STATUS_NUMBERS = {
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "RESOURCE_EXHAUSTED": 8,
    "UNAVAILABLE": 14,
    "INTERNAL": 13,
}


def image_from_request(request: pb.DetectFacesRequest) -> ImageInput:
    kind = request.WhichOneof("image")
    if kind == "encoded":
        return EncodedImage(request.encoded)
    if kind == "raw":
        raw = request.raw
        if raw.format not in _PIXEL_FORMATS:
            name = (
                pb.PixelFormat.Name(raw.format) if raw.format in pb.PixelFormat.values() else str(raw.format)
            )
            raise InvalidImage(f"raw.format {name} is not supported; use PIXEL_FORMAT_RGB8, _BGR8 or _GRAY8")
        return RawFrame(raw.width, raw.height, _PIXEL_FORMATS[raw.format], raw.data)
    raise InvalidImage("request has no image: set `encoded` (JPEG/PNG bytes) or `raw`")


def options_from_request(request: pb.DetectFacesRequest) -> RequestOptions:
    o = request.options
    return RequestOptions(
        o.min_confidence, o.iou_threshold, o.max_faces, o.min_face_size, o.ignore_exif_orientation
    )


def timing_to_proto(timing: Timing) -> pb.Timing:
    return pb.Timing(**timing.as_dict())  # the message's fields are Timing's, by name


def detection_to_response(detection: Detection, frame_id: int) -> pb.DetectFacesResponse:
    response = pb.DetectFacesResponse(
        image_width=detection.width,
        image_height=detection.height,
        frame_id=frame_id,
        timing=timing_to_proto(detection.timing),
    )
    for row in detection.faces.tolist():
        face = response.faces.add()
        face.confidence = row[4]
        box = face.box
        box.x_min, box.y_min, box.x_max, box.y_max = row[0:4]
        lm = face.landmarks
        for point, (x, y) in zip(
            (lm.left_eye, lm.right_eye, lm.nose, lm.mouth_left, lm.mouth_right),
            zip(row[5::2], row[6::2], strict=True),
            strict=True,
        ):
            point.x, point.y = x, y
    return response


def error_response(code_name: str, message: str, frame_id: int) -> pb.DetectFacesResponse:
    return pb.DetectFacesResponse(
        frame_id=frame_id, error=status_pb2.Status(code=STATUS_NUMBERS[code_name], message=message)
    )
