"""Frames from a source through one StreamDetectFaces call, in file or live mode, and back out
in source order with what became of each.

- file mode: every frame is sent; at most `window` are in flight, and the reader waits for the
  server (a bounded queue), so memory stays flat however long the video.
- live mode: frames are released at the pace of their timestamps (a file plays as if it were a
  camera), or as they arrive from a source that keeps its own pace (a network stream, a camera:
  `paced_by_source`); when the server falls behind, a frame still waiting to be sent when a
  newer one is due is dropped here, so what is sent is always the newest frame. The stream also asks the
  server for its live mode (options.live): frames it skips come back with `dropped`. Both kinds
  of drop are counted.

Three threads: the reader (decoding and pacing), gRPC's own request thread (pulling the next
frame to send) and the caller's (reading the answers). Every frame goes on one timeline in
source order, so frames that were not sent (dropped, or skipped by `every`) come out in their
place, for the output video and the JSON lines.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal

from facedet.client.blocking import FaceDetectorClient
from facedet.client.images import Frame
from facedet.client.messages import Detection, DetectionOptions
from facedet.client.video_source import SourceFrame

Mode = Literal["file", "live"]
MODES: tuple[Mode, ...] = ("file", "live")
# Frames in flight at once: enough to fill the server's batches from one file, and in live mode
# one running and one waiting, so a new frame never queues behind more than one other.
DEFAULT_WINDOW = {"file": 8, "live": 2}


class Fate(Enum):
    DETECTED = "detected"  # answered with faces (or with an error: Detection.error)
    DROPPED_HERE = "dropped here"  # live mode: a newer frame was due before this one was sent
    DROPPED_BY_SERVER = "dropped by the server"  # live mode: answered with `dropped`
    SKIPPED = "skipped"  # not sent: `every` chose other frames

    @property
    def dropped(self) -> bool:
        return self in (Fate.DROPPED_HERE, Fate.DROPPED_BY_SERVER)


@dataclass(frozen=True)
class FrameResult:
    frame: SourceFrame
    fate: Fate
    # DETECTED: the answer; otherwise the latest answer with faces before this frame (what an
    # output video shows on a frame that was never detected), or None if there is none yet.
    detection: Detection | None
    # Seconds from the frame being due (read, in file mode) to its answer; None if unanswered.
    latency: float | None = None


@dataclass
class _Entry:
    frame: SourceFrame
    due: float  # time.monotonic() when the frame was due (live) or read (file)
    fate: Fate | None = None  # None: waiting to be sent; set once sent, dropped or skipped
    sent: bool = False


class _Timeline:
    """Frames in source order, shared by the three threads under one lock."""

    def __init__(self, mode: Mode, window: int) -> None:
        self.mode = mode
        self.window = window
        self.entries: deque[_Entry] = deque()
        self.waiting = 0  # entries neither sent nor dropped nor skipped
        self.in_flight = 0
        self.reading = True
        self.closed = False  # the caller stopped: every wait ends
        self.lock = threading.Condition()

    def add(self, frame: SourceFrame, due: float, skipped: bool) -> bool:
        """Put a frame read from the source on the timeline; False once the caller stopped."""
        with self.lock:
            if self.mode == "file":  # the bounded queue: wait for the server
                while not self.closed and not skipped and self.waiting >= self.window:
                    self.lock.wait()
            if self.closed:
                return False
            entry = _Entry(frame, due)
            if skipped:
                entry.fate = Fate.SKIPPED
            else:
                if self.mode == "live" and self.waiting:  # the one waiting is stale now
                    for older in reversed(self.entries):
                        if older.fate is None and not older.sent:
                            older.fate = Fate.DROPPED_HERE
                            break
                    self.waiting -= 1
                self.waiting += 1
            self.entries.append(entry)
            self.lock.notify_all()
            return True

    def finish_reading(self) -> None:
        with self.lock:
            self.reading = False
            self.lock.notify_all()

    def next_to_send(self) -> _Entry | None:
        """For gRPC's request thread: the next frame to send once the window has room (file:
        the oldest waiting; live: the only one), or None when there is none left to send."""
        with self.lock:
            while not self.closed:
                if self.waiting and self.in_flight < self.window:
                    entry = next(e for e in self.entries if e.fate is None and not e.sent)
                    entry.sent = True
                    self.waiting -= 1
                    self.in_flight += 1
                    self.lock.notify_all()
                    return entry
                if not self.reading and not self.waiting:
                    return None
                self.lock.wait()
            return None

    def answered(self, frame_id: int) -> tuple[_Entry | None, list[_Entry]]:
        """An answer for `frame_id` came: (its entry, the unsent entries before it, in order)."""
        with self.lock:
            self.in_flight -= 1
            self.lock.notify_all()
            before: list[_Entry] = []
            while self.entries:
                entry = self.entries.popleft()
                if entry.sent and entry.frame.index == frame_id:
                    return entry, before
                before.append(entry)
            return None, before

    def rest(self) -> list[_Entry]:
        """After the stream: what is left (frames dropped or skipped after the last answer)."""
        with self.lock:
            left = list(self.entries)
            self.entries.clear()
            return left

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()


@dataclass
class StreamStats:
    read: int = 0  # frames chosen to send (not skipped by `every`)
    detected: int = 0
    failed: int = 0
    faces: int = 0
    dropped_here: int = 0
    dropped_by_server: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_here + self.dropped_by_server


class VideoStream:
    """`frames` through `client` over one stream; iterate `results()` for every frame read,
    in source order. `stats` counts as it goes; `error` holds what stopped the reader (raised
    by `results()` after the frames before it)."""

    def __init__(
        self,
        client: FaceDetectorClient,
        frames: Iterator[SourceFrame],
        payload: Callable[[SourceFrame], Frame],
        *,
        mode: Mode = "file",
        window: int | None = None,
        every: int = 1,
        max_frames: int | None = None,
        options: DetectionOptions | None = None,
        timeout: float | None = None,
        paced_by_source: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        self._client = client
        self._frames = frames
        self._payload = payload
        self.mode: Mode = mode
        self._timeline = _Timeline(mode, window or DEFAULT_WINDOW[mode])
        self._every = every
        self._max_frames = max_frames
        base = options if options is not None else client.options or DetectionOptions()
        self._options = replace(base, live=mode == "live")
        self._timeout = timeout
        # A real-time source delivers each frame when it is due. Pacing its frames again by their
        # timestamps from the first one read would hold every later frame back by whatever the
        # demuxer buffered before that first frame (FFmpeg probes about half a second of an RTSP
        # stream), for the whole run, and at the end lose what is still buffered when the source
        # says it is done.
        self._pace = mode == "live" and not paced_by_source
        self._clock = clock
        self.stats = StreamStats()
        self._reader_error: list[BaseException] = []

    def results(self) -> Iterator[FrameResult]:
        reader = threading.Thread(target=self._read, name="facedet-video-reader", daemon=True)
        reader.start()
        held: Detection | None = None
        try:
            responses = self._client.stream(self._requests(), self._options, timeout=self._timeout)
            for response in responses:
                entry, before = self._timeline.answered(response.frame_id)
                for unsent in before:
                    yield self._unsent(unsent, held)
                if entry is None:  # cannot happen with an in-order server; say so if it does
                    raise ValueError(f"the server answered frame {response.frame_id}, which was not sent")
                latency = self._clock() - entry.due
                if response.dropped:
                    self.stats.dropped_by_server += 1
                    yield FrameResult(entry.frame, Fate.DROPPED_BY_SERVER, held, latency)
                    continue
                self.stats.detected += 1
                if response.error is not None:
                    self.stats.failed += 1
                else:
                    self.stats.faces += len(response.faces)
                    held = response
                yield FrameResult(entry.frame, Fate.DETECTED, response, latency)
            for unsent in self._timeline.rest():
                yield self._unsent(unsent, held)
        finally:
            self._timeline.close()
            reader.join(timeout=5)
        if self._reader_error:
            raise self._reader_error[0]

    def _unsent(self, entry: _Entry, held: Detection | None) -> FrameResult:
        fate = entry.fate or Fate.DROPPED_HERE  # still waiting when the stream ended
        if fate is Fate.DROPPED_HERE:
            self.stats.dropped_here += 1
        return FrameResult(entry.frame, fate, held)

    def _requests(self) -> Iterator[Frame]:
        while (entry := self._timeline.next_to_send()) is not None:
            yield self._payload(entry.frame)

    def _read(self) -> None:
        started: float | None = None
        first_time = 0.0
        try:
            for frame in self._frames:
                skipped = frame.index % self._every != 0
                if not skipped:
                    if self._max_frames is not None and self.stats.read >= self._max_frames:
                        break
                    self.stats.read += 1
                now = self._clock()
                if started is None:
                    started, first_time = now, frame.time
                due = now
                if self._pace:  # release the frame at its timestamp
                    due = started + (frame.time - first_time)
                    if due > now:
                        time.sleep(due - now)
                if not self._timeline.add(frame, due, skipped):
                    return
        except Exception as exc:  # a decoding failure: end the stream, raise after its frames
            self._reader_error.append(exc)
        finally:
            self._timeline.finish_reading()
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
