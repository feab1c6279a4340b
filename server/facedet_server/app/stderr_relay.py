"""In JSON log mode every line on stderr is a JSON object, whoever wrote it. Native libraries
write to file descriptor 2 themselves (libpng's warnings, gRPC core's and ONNX Runtime's
messages, a C++ `terminate called ...`), and a log pipeline that parses each line as JSON would
choke on those; so the server's fd 2 becomes a pipe, and a relay process reads it and writes
each line to the real stderr: log lines of ours unchanged (a front end's or an engine's, which
inherit fd 2), anything else as a record `{"event": "stderr_line", "line": ...}`. Python-level
writes go the same way: sys.stderr stays on fd 2, so a library's own logging handler (torch's
compile warnings, made at its import with the sys.stderr of the time), `warnings` and a traceback
are relayed too. Only the first process's own log lines and its start-up errors, written to the
stream `start` returns, go to the real stderr directly: the errors stay lines for a person.

A process, not a thread: what a dying server writes last (an abort message) must still reach
the log, and the relay reads the pipe to its end, which comes only once every process writing
it (the server, its front ends and engines, which inherit fd 2) has gone. It is detached from
the server (a double fork), so it is never counted among the server's children, and ignores
the signals meant for the server; it exits at the end of the pipe.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import BinaryIO, TextIO

EVENT = "stderr_line"
# Set for the processes whose fd 2 already goes through a relay (inherited by a server's front
# ends and engines), so that only the first process starts one.
RELAYED_ENV = "FACEDET_STDERR_RELAYED"


def as_log_line(line: str, now: datetime) -> str | None:
    """`line` as it goes to the log: unchanged when it is a JSON object already (a log line of
    ours), else a warning record holding it; None for a blank line."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    if text.startswith("{"):
        try:
            if isinstance(json.loads(text), dict):
                return text
        except ValueError:
            pass
    timestamp = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"line": text, "event": EVENT, "level": "warning", "timestamp": timestamp})


def relay(lines: Iterable[bytes], sink: BinaryIO) -> None:
    for raw in lines:
        out = as_log_line(raw.decode("utf-8", "replace"), datetime.now(UTC))
        if out is not None:
            sink.write(out.encode() + b"\n")
            sink.flush()


def start() -> TextIO | None:
    """Route this process's fd 2 (and so its children's) through a relay, and return a stream
    on the real stderr for what this process itself writes as log lines or for a person. None,
    changing nothing, where one is already in place or it cannot be started."""
    if os.environ.get(RELAYED_ENV):
        return None
    read_end, write_end = os.pipe()
    # The relay holds `done`'s write end until it exits: its end of file tells this process,
    # at exit, that every line has reached the real stderr.
    done_read, done_write = os.pipe()
    try:
        intermediate = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=read_end,
            stdout=2,
            stderr=2,
            pass_fds=(done_write,),
        )
        started = intermediate.wait(30) == 0  # it has forked the relay and exited
    except (OSError, subprocess.SubprocessError):
        started = False
    finally:
        os.close(read_end)
        os.close(done_write)
    if not started:
        os.close(write_end)
        os.close(done_read)
        return None
    sys.stderr.flush()
    real = os.dup(2)
    os.dup2(write_end, 2)  # sys.stderr, and every handler holding it, now writes to the relay
    os.close(write_end)
    direct = open(real, "w", buffering=1, errors="backslashreplace")  # noqa: SIM115 - for the process's life
    os.environ[RELAYED_ENV] = "1"
    atexit.register(_drain, done_read, direct)
    return direct


def _drain(done_read: int, direct: TextIO, timeout: float = 5.0) -> None:
    """At exit: let go of the pipe and wait until the relay has written what it holds, so
    that whoever waited for this process finds the whole log written."""
    direct.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    select.select([done_read], [], [], timeout)  # readable at the relay's exit (end of file)
    os.close(done_read)


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the server's signals; the relay ends with its pipe
    if os.fork() > 0:
        os._exit(0)  # the intermediate: the relay is nobody's child but init's (or tini's)
    relay(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
