"""One line of progress, rewritten in place, for a person watching a terminal; nothing at all
when the stream is not one (a pipe, a log file, a test), so machine-read output stays clean."""

from __future__ import annotations

import time
from typing import TextIO

REFRESH_S = 0.25


class ProgressLine:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.enabled = stream.isatty()
        self._started = time.monotonic()
        self._shown = 0.0
        self._width = 0

    def update(self, frames: int, dropped: int, failed: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._shown < REFRESH_S:
            return
        self._shown = now
        fps = frames / max(now - self._started, 1e-9)
        text = f"{frames} frames  {fps:.1f} fps  {dropped} dropped"
        if failed:
            text += f"  {failed} failed"
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = len(text)

    def finish(self) -> None:
        """Clear the line, so the summary after it starts on a clean one."""
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
