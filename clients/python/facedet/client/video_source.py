"""Where `facedet stream` reads frames: a video file, a network stream (rtsp://, http(s)://, ...),
a camera device (/dev/videoN) or a folder of JPEG/PNG files, each frame with its index and its
presentation time.

Videos, streams and cameras are decoded with PyAV (FFmpeg in its wheels), imported only when
one is opened. A folder's files are kept as they are (sent encoded, decoded here only when the
pixels are needed: raw transport, drawing, blurring), and timed at a chosen rate.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedet.client.frames import folder_files
from facedet.client.optional import MissingDependency, opencv

if TYPE_CHECKING:
    import numpy as np

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt", "rtp")
DEFAULT_FOLDER_FPS = 30.0
# Seconds to wait for a network source or a camera to open, and then for each read.
DEFAULT_OPEN_TIMEOUT = 10.0


class SourceFrame:
    """One frame: its index in the source (from 0), its presentation time, and its picture,
    as PyAV decoded it or as a file's bytes, turned into BGR pixels only when asked."""

    __slots__ = ("_decode", "_pixels", "encoded", "file", "index", "pts", "time")

    def __init__(
        self,
        index: int,
        time: float,
        pts: int,
        decode: Callable[[], np.ndarray],
        encoded: bytes | None = None,
        file: str | None = None,
    ) -> None:
        self.index = index
        self.time = time  # seconds
        self.pts = pts  # in the source's time base (SourceInfo.time_base), for the writer
        self.encoded = encoded  # a folder's JPEG/PNG bytes, sendable as they are
        self.file = file  # a folder's file the frame comes from
        self._decode: Callable[[], np.ndarray] | None = decode
        self._pixels: np.ndarray | None = None

    def pixels(self) -> np.ndarray:
        """HxWx3 uint8, BGR (OpenCV's order), decoded once."""
        if self._pixels is None:
            assert self._decode is not None
            self._pixels = self._decode()
            self._decode = None  # drop the decoder's frame: only the pixels are kept
        return self._pixels


@dataclass(frozen=True)
class SourceInfo:
    name: str  # what the user gave: a path, a URL or a device
    kind: str  # "file", "network", "camera" or "folder"
    time_base: Fraction  # unit of SourceFrame.pts
    rate: Fraction  # frames per second (average, or guessed; a folder's chosen rate)

    @property
    def real_time(self) -> bool:
        """A network stream or a camera produces frames at its own pace; files can go faster."""
        return self.kind in ("network", "camera")


def source_kind(source: str) -> str:
    if "://" in source and source.split("://", 1)[0].lower() in NETWORK_SCHEMES:
        return "network"
    if source.startswith("/dev/video"):
        return "camera"
    return "folder" if Path(source).is_dir() else "file"


def open_source(
    source: str,
    *,
    folder_fps: float = DEFAULT_FOLDER_FPS,
    input_format: str | None = None,
    input_options: Mapping[str, str] | None = None,
    open_timeout: float = DEFAULT_OPEN_TIMEOUT,
) -> tuple[SourceInfo, Iterator[SourceFrame]]:
    """The source's description and its frames, in order. Raises FileNotFoundError for a
    missing file or an empty folder, MissingDependency without PyAV for a video, ValueError for
    a source PyAV cannot open or that has no video stream."""
    kind = source_kind(source)
    if kind == "folder":
        return _folder(source, folder_fps)
    if kind == "file" and not Path(source).is_file():
        raise FileNotFoundError(f"no such video file or folder: {source}")
    return _video(source, kind, input_format, dict(input_options or {}), open_timeout)


def _folder(source: str, fps: float) -> tuple[SourceInfo, Iterator[SourceFrame]]:
    files = folder_files(source)
    rate = Fraction(fps).limit_denominator(1001)
    info = SourceInfo(source, "folder", 1 / rate, rate)

    def frames() -> Iterator[SourceFrame]:
        for index, path in enumerate(files):
            data = path.read_bytes()
            yield SourceFrame(
                index, index / float(rate), index, partial(_decode_file, path), data, str(path)
            )

    return info, frames()


def _decode_file(path: Path) -> np.ndarray:
    import numpy as np

    cv2 = opencv("decoding a folder's images for raw frames, drawing or blurring")
    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: OpenCV cannot decode this image")
    return np.asarray(image)


def pyav() -> Any:
    """The av module, or MissingDependency saying how to get it."""
    if importlib.util.find_spec("av") is None:
        raise MissingDependency(
            "reading videos, network streams and cameras needs PyAV (pip install av) and OpenCV "
            "(pip install opencv-python-headless); both: pip install 'facedet-client[video]'",
            name="av",
        )
    import av

    return av


def _video(
    source: str, kind: str, input_format: str | None, options: dict[str, str], open_timeout: float
) -> tuple[SourceInfo, Iterator[SourceFrame]]:
    av = pyav()
    opencv("streaming video frames")  # said now, not at the first frame to draw or encode
    if kind == "camera" and input_format is None:
        input_format = "v4l2"
    timeout = (open_timeout, open_timeout) if kind != "file" else None
    try:
        container = av.open(source, format=input_format, options=options, timeout=timeout)
    except (av.FFmpegError, OSError) as exc:
        raise ValueError(f"cannot open {source}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{source} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame and slice threads: decoding keeps up with the network
    rate = Fraction(stream.average_rate or stream.guessed_rate or DEFAULT_FOLDER_FPS)
    time_base = Fraction(stream.time_base or 1 / rate)
    info = SourceInfo(source, kind, time_base, rate)

    def frames() -> Iterator[SourceFrame]:
        try:
            for index, frame in enumerate(container.decode(stream)):
                # A stream without timestamps (raw H.264, some cameras): time by the frame rate.
                pts = frame.pts if frame.pts is not None else round(index / rate / time_base)
                yield SourceFrame(index, float(pts * time_base), pts, _bgr(frame))
        except av.FFmpegError as exc:
            raise ValueError(f"{source}: decoding failed: {exc}") from None
        finally:
            container.close()

    return info, frames()


def _bgr(frame: Any) -> Callable[[], np.ndarray]:
    def convert() -> np.ndarray:
        import numpy as np

        return np.asarray(frame.to_ndarray(format="bgr24"))

    return convert
