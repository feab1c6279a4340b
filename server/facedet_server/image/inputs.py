"""What a request hands the pipeline: compressed bytes or a raw pixel frame, and the one
function that turns either into RGB pixels."""

from __future__ import annotations

from dataclasses import dataclass

from facedet_server.image.decode import DecodedImage, decode_encoded, decode_raw


@dataclass(frozen=True)
class EncodedImage:
    data: bytes


@dataclass(frozen=True)
class RawFrame:
    width: int
    height: int
    pixel_format: str  # "RGB8", "BGR8", "GRAY8"
    data: bytes


ImageInput = EncodedImage | RawFrame


def decode_image(
    image: ImageInput, max_pixels: int, target: tuple[int, int] | None, orient: bool = True
) -> DecodedImage:
    """Either kind of input -> RGB pixels; `target` (w, h) allows a DCT-reduced JPEG decode;
    `orient` applies a JPEG's EXIF orientation."""
    if isinstance(image, EncodedImage):
        return decode_encoded(image.data, max_pixels, target=target, orient=orient)
    return decode_raw(image.width, image.height, image.pixel_format, image.data, max_pixels)


def gray_frame(width: int, height: int, value: int = 114) -> RawFrame:
    """A uniform RGB frame (the letterbox padding colour by default), for warm-up runs."""
    return RawFrame(width, height, "RGB8", bytes([value]) * (width * height * 3))
