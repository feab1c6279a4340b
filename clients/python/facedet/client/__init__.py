"""facedet client: find faces through a facedet server.

    from facedet.client import FaceDetectorClient

    with FaceDetectorClient("localhost:50051") as client:
        for face in client.detect("photo.jpg").faces:
            print(face.confidence, face.box)

Needs only grpcio, protobuf and numpy; OpenCV is imported lazily, for drawing and for reading
image files in formats other than JPEG and PNG.
"""

from facedet.client.aio import AsyncFaceDetectorClient
from facedet.client.blocking import FaceDetectorClient
from facedet.client.errors import FaceDetectorError
from facedet.client.images import Frame, ImageLike, PixelFormat, build_request
from facedet.client.messages import (
    BoundingBox,
    Detection,
    DetectionOptions,
    Face,
    Landmarks,
    Limits,
    ModelInfo,
    Point,
    Status,
    Timing,
)

__all__ = [
    "AsyncFaceDetectorClient",
    "BoundingBox",
    "Detection",
    "DetectionOptions",
    "Face",
    "FaceDetectorClient",
    "FaceDetectorError",
    "Frame",
    "ImageLike",
    "Landmarks",
    "Limits",
    "ModelInfo",
    "PixelFormat",
    "Point",
    "Status",
    "Timing",
    "build_request",
]
