"""How a video frame travels to the server: JPEG-encoded here, or as raw pixels.

Raw pixels (RawImage BGR8) cost no encoding here and no decoding there, but are about ten times
the bytes; JPEG is the reverse. Which is cheaper per frame depends on the link: the figures are
in docs/benchmarks.md ("Issue 16: video frames, JPEG or raw, TCP or unix socket"), measured by
`python -m facedet_bench.video_transport`, and `default_transport` follows them: at 640x480 the
transport costs 3.4-3.8 ms a frame either way, beside some 26 ms for the model.
"""

from __future__ import annotations

from typing import Literal

from facedet.client.images import Frame
from facedet.client.optional import opencv
from facedet.client.video_source import SourceFrame

Transport = Literal["jpeg", "raw"]
TRANSPORTS: tuple[Transport, ...] = ("jpeg", "raw")
DEFAULT_JPEG_QUALITY = 90


def default_transport(target: str) -> Transport:
    """Raw pixels over a unix socket (the bytes are a memory copy, and the server spends no CPU
    decoding JPEG), JPEG over TCP (a 25th of the bytes: cheaper even on loopback, and what a
    real network needs)."""
    return "raw" if target.startswith("unix:") else "jpeg"


def frame_payload(frame: SourceFrame, transport: Transport, quality: int = DEFAULT_JPEG_QUALITY) -> Frame:
    """The stream item for `frame`, its id the frame's index. A folder's JPEG/PNG file goes as
    it is over the JPEG transport (re-encoding it would only lose quality)."""
    if transport == "raw":
        return Frame(frame.pixels(), frame_id=frame.index, pixel_format="BGR8")
    if frame.encoded is not None:
        return Frame(frame.encoded, frame_id=frame.index)
    return Frame(encode_jpeg(frame.pixels(), quality), frame_id=frame.index)


def encode_jpeg(image_bgr: object, quality: int) -> bytes:
    cv2 = opencv("JPEG-encoding video frames")
    ok, data = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not JPEG-encode a frame")
    return bytes(data.tobytes())
