"""The optional packages, imported only by the features that need them.

A client-only install (`pip install facedet-client`) has grpcio and protobuf alone: JPEG/PNG
files and bytes go to the server as they are. Arrays need NumPy; other image formats, drawing and
video files need OpenCV (opencv-python-headless, which brings NumPy).
"""

from __future__ import annotations

from typing import Any


class MissingDependency(ImportError):
    """An optional package that one feature needs is not installed; the message says which and
    how to install it."""


def opencv(purpose: str) -> Any:
    """The cv2 module, or MissingDependency saying that `purpose` needs OpenCV."""
    try:
        import cv2
    except ImportError:
        raise MissingDependency(
            f"{purpose} needs OpenCV: pip install opencv-python-headless", name="cv2"
        ) from None
    return cv2
