"""`--output`: the frames written back as a video with PyAV, one output frame per input frame at
the input's own timestamps, so the result lines up with the source frame for frame."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedet.client.optional import opencv
from facedet.client.video_source import pyav

if TYPE_CHECKING:
    import numpy as np

# H.264 at constant rate factor 18: visually lossless, so what the output shows (and the
# tests' PSNR outside the faces) is the drawing or the blur, not the encoder.
# "veryfast": a video pipeline's sidecar must not spend the CPU the detector needs on encoding.
X264 = {"crf": "18", "preset": "veryfast"}


class VideoWriter:
    """Opened at the first frame (its size is the video's; later frames of another size, from
    a folder of mixed photos, are scaled to it)."""

    def __init__(self, path: str | Path, time_base: Fraction, rate: Fraction) -> None:
        self.path = Path(path)
        self.time_base = time_base
        self.rate = rate
        self.frames = 0
        self._av = pyav()
        self._container: Any = None
        self._stream: Any = None
        self._last_pts: int | None = None

    def write(self, image: np.ndarray, pts: int) -> None:
        """One BGR frame at `pts` (in `time_base`); pts must increase."""
        if self._container is None:
            self._open(image.shape[1], image.shape[0])
        stream = self._stream
        if (image.shape[1], image.shape[0]) != (stream.width, stream.height):
            image = opencv("scaling frames for --output").resize(image, (stream.width, stream.height))
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # a repeated timestamp (a broken stream): keep the frame
        self._last_pts = pts
        frame = self._av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = pts
        frame.time_base = self.time_base
        self._container.mux(stream.encode(frame))
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            container = self._av.open(str(self.path), "w")
        except (self._av.FFmpegError, OSError) as exc:
            raise OSError(f"cannot write {self.path}: {exc}") from None
        codec = "libx264" if "libx264" in self._av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=self.rate, options=X264 if codec == "libx264" else {})
        stream.width, stream.height = width, height
        # 4:2:0 needs even sides; an odd-sized source keeps full chroma instead of losing a row.
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        stream.time_base = self.time_base
        stream.codec_context.time_base = self.time_base
        self._container, self._stream = container, stream

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))  # flush the encoder's delayed frames
        finally:
            self._container.close()
            self._container = None
