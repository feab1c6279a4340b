"""facedet client: find faces through a facedet server.

    from facedet.client import FaceDetectorClient

    with FaceDetectorClient("localhost:50051") as client:
        for face in client.detect("photo.jpg").faces:
            print(face.confidence, face.box)

Needs only grpcio and protobuf (the distribution `facedet-client`, clients/python/); NumPy is
used for arrays where installed, and OpenCV, imported lazily, for drawing, video files and image
files in formats other than JPEG and PNG (see facedet.client.optional).
"""

from facedet.client.aio import AsyncFaceDetectorClient
from facedet.client.blocking import FaceDetectorClient
from facedet.client.errors import FaceDetectorError, NoAnswerError
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
from facedet.client.optional import MissingDependency

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
    "MissingDependency",
    "ModelInfo",
    "NoAnswerError",
    "PixelFormat",
    "Point",
    "Status",
    "Timing",
    "build_request",
]
