"""Whatever the caller holds (a path, encoded bytes, a numpy array) -> a DetectFacesRequest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facedet.v1 import face_detector_pb2 as pb

ImageLike = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray
PixelFormat = Literal["RGB", "BGR"]

_FORMATS = {"RGB": pb.PIXEL_FORMAT_RGB8, "BGR": pb.PIXEL_FORMAT_BGR8}
# Formats the server decodes itself; anything else read from a file is decoded here, if OpenCV
# is installed, and sent as raw pixels.
_SERVER_FORMATS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


@dataclass(frozen=True)
class Frame:
    """A stream item with its own frame id (and, for arrays, pixel order)."""

    image: ImageLike
    frame_id: int | None = None
    pixel_format: PixelFormat | None = None


def build_request(
    image: ImageLike,
    *,
    options: pb.DetectionOptions | None = None,
    frame_id: int = 0,
    pixel_format: PixelFormat = "RGB",
) -> pb.DetectFacesRequest:
    """Paths are read and sent encoded; bytes are sent as they are (JPEG or PNG); arrays are sent
    as raw pixels: HxWx3 uint8 in `pixel_format` order, or HxW / HxWx1 uint8 grayscale."""
    request = pb.DetectFacesRequest(frame_id=frame_id)
    if options is not None:
        request.options.CopyFrom(options)
    if isinstance(image, np.ndarray):
        request.raw.CopyFrom(raw_image(image, pixel_format))
    elif isinstance(image, bytes | bytearray | memoryview):
        request.encoded = bytes(image)
    elif isinstance(image, str | os.PathLike):
        data = Path(image).read_bytes()
        if data.startswith(_SERVER_FORMATS):
            request.encoded = data
        else:
            decoded = _decode_locally(data)
            if decoded is None:
                request.encoded = data  # the server's error names the format it found
            else:
                request.raw.CopyFrom(raw_image(decoded, "BGR"))
    else:
        raise TypeError(f"image must be a path, encoded bytes or a numpy array, not {type(image).__name__}")
    return request


def raw_image(array: np.ndarray, pixel_format: PixelFormat = "RGB") -> pb.RawImage:
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        fmt = pb.PIXEL_FORMAT_GRAY8
    elif array.ndim == 3 and array.shape[2] == 3:
        if pixel_format not in _FORMATS:
            raise ValueError(f"pixel_format must be 'RGB' or 'BGR', got {pixel_format!r}")
        fmt = _FORMATS[pixel_format]
    else:
        raise ValueError(
            f"image arrays must be HxWx3 (RGB/BGR) or HxW (gray), got shape {array.shape}; "
            "drop an alpha channel first"
        )
    height, width = array.shape[:2]
    return pb.RawImage(width=width, height=height, format=fmt, data=np.ascontiguousarray(array).tobytes())


def _imread_flags(cv2: Any) -> int:
    # The server ignores EXIF orientation, so pixels here must too for coordinates to match.
    return int(cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


def _decode_locally(data: bytes) -> np.ndarray | None:
    try:
        import cv2
    except ImportError:
        return None
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), _imread_flags(cv2))
    return decoded if isinstance(decoded, np.ndarray) else None


def load_bgr(image: ImageLike, pixel_format: PixelFormat = "RGB") -> np.ndarray:
    """The image as an HxWx3 BGR array, for drawing on (needs OpenCV for paths and bytes)."""
    import cv2

    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
            return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
        return image.copy() if pixel_format == "BGR" else np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    data = Path(image).read_bytes() if isinstance(image, str | os.PathLike) else bytes(image)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), _imread_flags(cv2))
    if decoded is None:
        raise ValueError("OpenCV cannot decode this image")
    return np.asarray(decoded)


def frame_request(
    item: ImageLike | Frame,
    index: int,
    options: pb.DetectionOptions | None,
    pixel_format: PixelFormat,
) -> pb.DetectFacesRequest:
    """The request for the `index`-th item of a stream; its frame id defaults to `index`."""
    if isinstance(item, Frame):
        frame_id = index if item.frame_id is None else item.frame_id
        return build_request(
            item.image, options=options, frame_id=frame_id, pixel_format=item.pixel_format or pixel_format
        )
    return build_request(item, options=options, frame_id=index, pixel_format=pixel_format)
