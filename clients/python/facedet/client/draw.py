"""Boxes, landmarks and scores drawn onto an image, with OpenCV (imported only here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facedet.client.images import ImageLike, PixelFormat, load_bgr
from facedet.client.messages import Detection

# BGR colours per landmark, in Landmarks.points() order, so left/right mix-ups show at a glance.
_LANDMARK_COLOURS = ((255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255))
_BOX_COLOUR = (0, 255, 0)


def draw_detection(image_bgr: np.ndarray, detection: Detection) -> np.ndarray:
    """A copy of the BGR image with each face's box, five landmarks and confidence."""
    import cv2

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


def save_drawing(
    image: ImageLike, detection: Detection, out: str | Path, pixel_format: PixelFormat = "RGB"
) -> Path:
    """Draw `detection` on `image` and write it to `out` (format from its suffix, e.g. .png)."""
    import cv2

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), draw_detection(load_bgr(image, pixel_format), detection)):
        raise OSError(f"OpenCV could not write {out} (is the suffix an image format?)")
    return out
