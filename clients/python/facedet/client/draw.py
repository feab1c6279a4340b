"""Boxes, landmarks and scores drawn onto an image, with OpenCV (imported only here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from facedet.client.image_files import decode, read_image_file
from facedet.client.images import DEFAULT_PIXEL_FORMAT, ImageLike, PixelFormat, is_bgr
from facedet.client.messages import Detection
from facedet.client.optional import opencv

if TYPE_CHECKING:
    import numpy as np

# BGR colours per landmark, in Landmarks.points() order, so left/right mix-ups show at a glance.
_LANDMARK_COLOURS = ((255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255))
_BOX_COLOUR = (0, 255, 0)
_DRAWING = "drawing detections"


def draw_detection(image_bgr: np.ndarray, detection: Detection) -> np.ndarray:
    """A copy of the BGR image with each face's box, five landmarks and confidence."""
    cv2 = opencv(_DRAWING)
    canvas = image_bgr.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 500))
    for face in detection.faces:
        box = face.box
        top_left = (round(box.x_min), round(box.y_min))
        cv2.rectangle(canvas, top_left, (round(box.x_max), round(box.y_max)), _BOX_COLOUR, thickness)
        for point, colour in zip(face.landmarks.points(), _LANDMARK_COLOURS, strict=True):
            cv2.circle(canvas, (round(point.x), round(point.y)), thickness + 1, colour, -1)
        cv2.putText(
            canvas,
            f"{face.confidence:.2f}",
            (top_left[0], max(top_left[1] - 4, 10)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thickness,
            _BOX_COLOUR,
            thickness,
        )
    return canvas


def load_bgr(image: ImageLike, pixel_format: PixelFormat = DEFAULT_PIXEL_FORMAT) -> np.ndarray:
    """The image as an HxWx3 BGR array, for drawing on (needs OpenCV)."""
    import numpy as np

    cv2 = opencv(_DRAWING)
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
            return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
        return image.copy() if is_bgr(pixel_format) else np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    data = read_image_file(image) if isinstance(image, str | os.PathLike) else bytes(image)
    decoded = decode(cv2, data)
    if decoded is None:
        raise ValueError("OpenCV cannot decode this image")
    return np.asarray(decoded)


def save_drawing(
    image: ImageLike, detection: Detection, out: str | Path, pixel_format: PixelFormat = DEFAULT_PIXEL_FORMAT
) -> Path:
    """Draw `detection` on `image` and write it to `out` (format from its suffix, e.g. .png)."""
    cv2 = opencv(_DRAWING)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), draw_detection(load_bgr(image, pixel_format), detection)):
        raise OSError(f"OpenCV could not write {out} (is the suffix an image format?)")
    return out
