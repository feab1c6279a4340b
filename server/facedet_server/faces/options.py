"""Per-request detection options: validation and the server's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

from facedet_server.errors import InvalidOptions


@dataclass(frozen=True)
class Options:
    min_confidence: float = 0.5
    iou_threshold: float = 0.5
    max_faces: int = 1000
    min_face_size: float = 0.0
    # Detect in the upright picture a JPEG's EXIF orientation describes (what viewers show),
    # rather than in its pixels as stored.
    exif_orientation: bool = True


def _check_unit(name: str, value: float) -> None:
    if math.isnan(value) or value < 0 or value > 1:
        raise InvalidOptions(f"options.{name} must be in (0, 1] (0 = server default), got {value}")


def resolve_options(
    defaults: Options,
    *,
    min_confidence: float = 0.0,
    iou_threshold: float = 0.0,
    max_faces: int = 0,
    min_face_size: float = 0.0,
    max_faces_limit: int = 1000,
    ignore_exif_orientation: bool = False,
) -> Options:
    """Fill zero fields from `defaults`; reject NaN, negative and out-of-range values."""
    _check_unit("min_confidence", min_confidence)
    _check_unit("iou_threshold", iou_threshold)
    if math.isnan(min_face_size) or min_face_size < 0 or math.isinf(min_face_size):
        raise InvalidOptions(
            f"options.min_face_size must be a finite number of pixels >= 0, got {min_face_size}"
        )
    if max_faces < 0 or max_faces > max_faces_limit:
        raise InvalidOptions(f"options.max_faces must be between 0 and {max_faces_limit}, got {max_faces}")
    return Options(
        min_confidence=min_confidence or defaults.min_confidence,
        iou_threshold=iou_threshold or defaults.iou_threshold,
        max_faces=max_faces or min(defaults.max_faces, max_faces_limit),
        min_face_size=min_face_size or defaults.min_face_size,
        exif_orientation=defaults.exif_orientation and not ignore_exif_orientation,
    )
