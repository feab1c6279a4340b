"""INT8 calibration data: a folder of images -> NCHW float32 batches, preprocessed exactly as the
server preprocesses requests (same decoder, same letterbox, same scaling), so the activation
ranges TensorRT measures are the ones it will see in service.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from facedet_server.errors import InvalidImage
from facedet_server.image.decode import decode_encoded
from facedet_server.tensor.letterbox import letterbox, to_tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_PIXELS = 100_000_000


class CalibrationError(ValueError):
    pass


def list_images(folder: Path) -> list[Path]:
    """The folder's JPEG/PNG files (not recursive), sorted, so calibration is reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder {folder} does not exist")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise CalibrationError(f"calibration folder {folder} has no {'/'.join(IMAGE_SUFFIXES)} files")
    return images


class CalibrationData:
    """Batches of shape `shape` (N, 3, H, W) from the images in `folder`.

    TensorRT calibrates on full batches only, so the last batch is topped up with images from
    the start of the list; `max_batches` bounds the time calibration takes.
    """

    def __init__(
        self,
        folder: Path,
        shape: tuple[int, int, int, int],
        *,
        max_batches: int | None = None,
        pad_value: int = 114,
        scale: float = 1.0 / 255.0,
    ) -> None:
        n, c = shape[0], shape[1]
        if c != 3 or min(shape) <= 0:
            raise CalibrationError(f"calibration shape {shape} is not (N, 3, H, W)")
        self.shape = shape
        self.pad_value = pad_value
        self.scale = scale
        self.images = list_images(folder)
        batches = -(-len(self.images) // n)
        self.num_batches = min(batches, max_batches) if max_batches else batches

    def __len__(self) -> int:
        return self.num_batches

    def load(self, path: Path, out: np.ndarray) -> None:
        """Decode, letterbox and scale one image into `out` (3, H, W)."""
        _, _, h, w = self.shape
        try:
            image = decode_encoded(path.read_bytes(), MAX_PIXELS, target=(w, h))
        except InvalidImage as exc:
            raise CalibrationError(f"calibration image {path}: {exc}") from None
        canvas, _ = letterbox(image.pixels, w, h, self.pad_value)
        to_tensor(canvas, out, self.scale)

    def __iter__(self) -> Iterator[np.ndarray]:
        n = self.shape[0]
        for b in range(self.num_batches):
            batch = np.empty(self.shape, np.float32)
            for slot in range(n):
                self.load(self.images[(b * n + slot) % len(self.images)], batch[slot])
            yield batch
