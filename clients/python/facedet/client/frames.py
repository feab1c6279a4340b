"""Frame sources for streaming: a video file (OpenCV, else PyAV) or a folder of images.

Both yield `Frame`s whose id is the frame's index in the source, so skipped frames keep their
place in the numbering.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedet.client.images import Frame
from facedet.client.optional import MissingDependency, opencv

if TYPE_CHECKING:
    import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def folder_files(folder: str | Path) -> list[Path]:
    """The folder's JPEG/PNG files in name order: frame i of folder_frames is file i."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no .jpg, .jpeg or .png files in {folder}")
    return files


def folder_frames(folder: str | Path, every: int = 1, max_frames: int | None = None) -> Iterator[Frame]:
    """The folder's JPEG/PNG files in name order (folder_files), as file_frames sends them."""
    return file_frames(folder_files(folder), every, max_frames)


def file_frames(files: Sequence[Path], every: int = 1, max_frames: int | None = None) -> Iterator[Frame]:
    """Frame i is file i, sent encoded (the file's bytes: a broken file gets the server's error
    on its own frame, and the stream goes on)."""
    return _select(((i, p.read_bytes()) for i, p in enumerate(files)), every, max_frames)


def video_frames(
    path: str | Path, every: int = 1, max_frames: int | None = None, jpeg_quality: int | None = None
) -> Iterator[Frame]:
    """Decoded frames as raw BGR arrays, or JPEG bytes of that quality when `jpeg_quality` is set
    (a tenth of the bytes on the wire, at the cost of encoding here and decoding there)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such video file: {path}")
    # Said now rather than from inside a stream's request thread at its first frame.
    if not _installed("cv2"):
        if jpeg_quality:
            opencv("JPEG-encoding video frames")
        if not _installed("av"):
            raise MissingDependency(
                "reading video frames needs OpenCV (pip install opencv-python-headless) "
                "or PyAV (pip install av)",
                name="cv2",
            )
    frames = _encode(_video(Path(path)), jpeg_quality) if jpeg_quality else _video(Path(path))
    return _select(frames, every, max_frames)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _select(frames: Iterator[tuple[int, Any]], every: int, max_frames: int | None) -> Iterator[Frame]:
    if every < 1:
        raise ValueError("every must be >= 1")
    sent = 0
    for index, image in frames:
        if max_frames is not None and sent >= max_frames:
            return
        if index % every == 0:
            sent += 1
            yield Frame(image, frame_id=index, pixel_format="BGR8")


def _video(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    if _installed("cv2"):
        cv2 = opencv("reading video frames")
        capture = cv2.VideoCapture(str(path))
        if capture.isOpened():
            try:
                index = 0
                while True:
                    ok, frame = capture.read()
                    if not ok:
                        return
                    yield index, frame
                    index += 1
            finally:
                capture.release()
    yield from _video_pyav(path)


def _video_pyav(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    try:
        import av
    except ImportError:
        raise ValueError(f"OpenCV cannot open {path} and PyAV is not installed") from None
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            yield index, frame.to_ndarray(format="bgr24")


def _encode(frames: Iterator[tuple[int, np.ndarray]], quality: int) -> Iterator[tuple[int, bytes]]:
    cv2 = opencv("JPEG-encoding video frames")
    for index, frame in frames:
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"OpenCV could not JPEG-encode frame {index}")
        yield index, data.tobytes()
