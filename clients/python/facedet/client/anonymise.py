"""`--blur`: each face made unrecognisable, with OpenCV (imported only here).

A face becomes a coarse mosaic, then is smoothed: a mosaic of so few cells keeps no identity
(a Gaussian blur alone can be partly undone), and the smoothing hides the cell edges. The box
is padded first, since the model's boxes hug the face and leave hair, ears and chin outside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from facedet.client.messages import BoundingBox, Detection
from facedet.client.optional import opencv

if TYPE_CHECKING:
    import numpy as np

# Each side of a box grows by this fraction of the box's width (height) before anonymising.
DEFAULT_PADDING = 0.25
# Cells across the longer side of the padded box.
MOSAIC_CELLS = 8


def padded_box(box: BoundingBox, width: int, height: int, padding: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in whole pixels: `box` grown by `padding` of its size on each side,
    clamped to the image."""
    dx, dy = box.width * padding, box.height * padding
    x0, y0 = max(0, int(box.x_min - dx)), max(0, int(box.y_min - dy))
    x1, y1 = min(width, int(box.x_max + dx + 1)), min(height, int(box.y_max + dy + 1))
    return x0, y0, x1, y1


def anonymise_faces(
    image_bgr: np.ndarray, detection: Detection, padding: float = DEFAULT_PADDING
) -> np.ndarray:
    """A copy of the image with every face of `detection` anonymised."""
    cv2 = opencv("blurring faces")
    canvas = image_bgr.copy()
    height, width = canvas.shape[:2]
    for face in detection.faces:
        x0, y0, x1, y1 = padded_box(face.box, width, height, padding)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        region = canvas[y0:y1, x0:x1]
        h, w = region.shape[:2]
        scale = MOSAIC_CELLS / max(w, h)
        small = cv2.resize(
            region, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
        mosaic = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
        kernel = max(3, (max(w, h) // MOSAIC_CELLS) | 1)  # odd, about one cell
        canvas[y0:y1, x0:x1] = cv2.GaussianBlur(mosaic, (kernel, kernel), 0)
    return canvas
