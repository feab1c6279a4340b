"""Candidates of one image -> the final faces, in the client's pixels."""

from __future__ import annotations

import numpy as np

from facedet_server.faces.nms import nms
from facedet_server.faces.options import Options
from facedet_server.tensor.letterbox import Letterbox

# NMS is quadratic in the candidates that pass the threshold; a low threshold on a crowd photo can
# leave tens of thousands, so only the best are considered (upstream uses 30,000 with a
# C++ NMS; ours is NumPy).
MAX_NMS_CANDIDATES = 5000


def select_faces(
    candidates: np.ndarray, options: Options, transform: Letterbox, width: int, height: int
) -> np.ndarray:
    """Filter (K, 15) network-pixel candidates by score, suppress overlaps, map to the original
    image, clamp to it, then apply min_face_size and max_faces. Returns (M, 15) float32 sorted
    by descending score."""
    kept = candidates[candidates[:, 4] >= options.min_confidence]
    if kept.shape[0] > MAX_NMS_CANDIDATES:
        kept = kept[np.argpartition(-kept[:, 4], MAX_NMS_CANDIDATES)[:MAX_NMS_CANDIDATES]]
    # Suppression runs in network pixels, where the model's boxes live; the letterbox map is
    # affine with positive gains, so the IoU order barely changes and no face is lost.
    kept = kept[nms(kept[:, :4], kept[:, 4], options.iou_threshold)]
    faces = np.empty_like(kept)
    faces[:, 4] = kept[:, 4]
    faces[:, 0:4] = transform.to_original(kept[:, 0:4])
    faces[:, 5:] = transform.to_original(kept[:, 5:])
    for first, limit in ((0, width), (1, height)):  # x columns, then y columns
        np.clip(faces[:, first:4:2], 0, limit, out=faces[:, first:4:2])
        np.clip(faces[:, 5 + first :: 2], 0, limit, out=faces[:, 5 + first :: 2])
    if options.min_face_size > 0:
        sides = np.minimum(faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1])
        faces = faces[sides >= options.min_face_size]
    return np.ascontiguousarray(faces[: options.max_faces], dtype=np.float32)
