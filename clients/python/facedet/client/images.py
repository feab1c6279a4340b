"""Whatever the caller holds (a path, encoded bytes, a numpy array) -> a DetectFacesRequest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from facedet.client.image_files import encoded_image_file
from facedet.v1 import face_detector_pb2 as pb

if TYPE_CHECKING:
    from numpy import ndarray
else:
    try:
        from numpy import ndarray
    except ImportError:  # a client-only install without NumPy: no value is an array

        class ndarray:  # stands in for numpy's name
            pass


ImageLike = str | os.PathLike[str] | bytes | bytearray | memoryview | ndarray
# The order of a 3-channel array's channels. "RGB" and "BGR" are the older spellings of "RGB8"
# and "BGR8", kept working. HxW and HxWx1 arrays are always GRAY8.
PixelFormat = Literal["RGB8", "BGR8", "GRAY8", "RGB", "BGR"]
DEFAULT_PIXEL_FORMAT: PixelFormat = "RGB8"

_FORMATS = {
    "RGB8": pb.PIXEL_FORMAT_RGB8,
    "RGB": pb.PIXEL_FORMAT_RGB8,
    "BGR8": pb.PIXEL_FORMAT_BGR8,
    "BGR": pb.PIXEL_FORMAT_BGR8,
    "GRAY8": pb.PIXEL_FORMAT_GRAY8,
}


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
    pixel_format: PixelFormat = DEFAULT_PIXEL_FORMAT,
) -> pb.DetectFacesRequest:
    """Paths are read and sent encoded (JPEG and PNG as they are, other formats re-encoded here);
    bytes are sent as they are (the server takes JPEG or PNG); arrays are sent as raw pixels:
    HxWx3 uint8 in `pixel_format` order ("RGB8", the default, or "BGR8": OpenCV's order), or
    HxW / HxWx1 uint8 grayscale. An image file that cannot be sent raises FaceDetectorError
    (INVALID_ARGUMENT, naming the file)."""
    request = pb.DetectFacesRequest(frame_id=frame_id)
    if options is not None:
        request.options.CopyFrom(options)
    if isinstance(image, ndarray):
        request.raw.CopyFrom(raw_image(image, pixel_format))
    elif isinstance(image, bytes | bytearray | memoryview):
        request.encoded = bytes(image)
    elif isinstance(image, str | os.PathLike):
        request.encoded = encoded_image_file(image)
    else:
        raise TypeError(f"image must be a path, encoded bytes or a numpy array, not {type(image).__name__}")
    return request


def raw_image(array: ndarray, pixel_format: PixelFormat = DEFAULT_PIXEL_FORMAT) -> pb.RawImage:
    import numpy as np

    if pixel_format not in _FORMATS:
        raise ValueError(f"pixel_format must be 'RGB8', 'BGR8' or 'GRAY8', got {pixel_format!r}")
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        fmt = pb.PIXEL_FORMAT_GRAY8
    elif array.ndim == 3 and array.shape[2] == 3:
        if pixel_format == "GRAY8":
            raise ValueError(f"a {array.shape} array is not GRAY8; say pixel_format='RGB8' or 'BGR8'")
        fmt = _FORMATS[pixel_format]
    else:
        raise ValueError(
            f"image arrays must be HxWx3 (RGB8/BGR8) or HxW (GRAY8), got shape {array.shape}; "
            "drop an alpha channel first"
        )
    height, width = array.shape[:2]
    return pb.RawImage(width=width, height=height, format=fmt, data=np.ascontiguousarray(array).tobytes())


def is_bgr(pixel_format: PixelFormat) -> bool:
    return pixel_format in ("BGR8", "BGR")


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
