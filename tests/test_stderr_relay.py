"""In JSON log mode every line on the server's stderr is JSON, even what native libraries write
to fd 2 themselves (facedet_server.app.stderr_relay): checked on a real server that libpng warns
in, killed at once, and one stopped normally."""

from __future__ import annotations

import json
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from facedet.v1 import face_detector_pb2 as pb
from facedet_bench.hostile import png_with_trailing_zlib
from facedet_server.app.stderr_relay import EVENT, as_log_line
from facedet_test_support import Server, ServerFactory, wait_for

NOW = datetime(2026, 12, 2, 15, 0, 0, 123456, tzinfo=UTC)


def test_our_log_lines_pass_unchanged_and_others_become_records() -> None:
    ours = '{"event": "serving", "level": "info"}'
    assert as_log_line(ours + "\n", NOW) == ours
    wrapped = as_log_line("libpng warning: IDAT: Too much image data\n", NOW)
    assert wrapped is not None
    assert json.loads(wrapped) == {
        "line": "libpng warning: IDAT: Too much image data",
        "event": EVENT,
        "level": "warning",
        "timestamp": "2026-12-02T15:00:00.123456Z",
    }
    for not_an_object in ("[1, 2]", "{not json", '"a string"'):
        record = as_log_line(not_an_object, NOW)
        assert record is not None and json.loads(record)["line"] == not_an_object
    assert as_log_line("  \n", NOW) is None


def test_a_native_warning_reaches_the_log_as_json_even_when_the_server_is_killed(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    # libpng warns on fd 2 ("IDAT: Too much image data") and decodes the picture all the same.
    png = png_with_trailing_zlib(64, 64, 1000)
    with server.stub() as stub:
        response = stub.DetectFaces(pb.DetectFacesRequest(encoded=png), timeout=30)
    assert (response.image_width, response.image_height) == (64, 64)
    server.signal(signal.SIGKILL)  # no drain, no exit handler: the relay alone delivers the line
    server.wait_exit()

    def warned() -> bool:
        return any(r.get("event") == EVENT and "libpng" in r["line"] for r in server.log_records())

    wait_for(warned, 10, "libpng's warning in the log")
    records = server.log_records()  # every line JSON, or this fails
    relayed = [r for r in records if r.get("event") == EVENT]
    assert relayed and all(r["level"] == "warning" and "libpng warning" in r["line"] for r in relayed), (
        relayed
    )
    assert any(r.get("event") == "serving" for r in records)  # our own lines went through too


def test_the_whole_log_is_written_when_the_server_has_exited(start_server: ServerFactory) -> None:
    """The server waits at exit for the relay to write what it holds, so a supervisor (or this
    test) reading the log right after the exit finds the last line."""
    server = start_server()
    assert server.stop() == 0
    records = server.log_records()
    assert records[-1]["event"] == "stopped", records[-3:]


# Run as `python -c`: a library's logging handler made the way torch makes its own (a
# StreamHandler on sys.stderr, not propagating), a warning and a plain print, all written by
# the first process once it serves; then `facedet serve` itself.
LIBRARY_WRITES = """
import logging, sys, threading, warnings
library = logging.getLogger("library")
library.propagate = False
library.addHandler(logging.StreamHandler())
def write():
    library.warning("W1203 library warning from a handler of its own")
    warnings.warn("a Python warning")
    print("a plain line on sys.stderr", file=sys.stderr)
threading.Timer(3.0, write).start()
from facedet.cli import main
sys.exit(main())
"""


class LibraryWritingServer(Server):
    """`facedet serve` run through LIBRARY_WRITES (facedet_command is `python -m facedet.cli`)."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", LIBRARY_WRITES, *super().command()[3:]]


def test_python_level_writes_of_the_first_process_reach_the_log_as_json(tmp_path: Path) -> None:
    """torch's compile warnings come through its own handler on sys.stderr: in a one-process
    server (no relay in between, as for a front end or an engine) they were plain lines."""
    with LibraryWritingServer(tmp_path, "--log-format", "json", unix=False) as server:
        wait_for(lambda: "a plain line" in server.log_text(), 60, "the writes in the log")
        assert server.stop() == 0
    records = server.log_records()  # every line JSON, or this fails
    relayed = " ".join(r["line"] for r in records if r.get("event") == EVENT)
    for text in ("W1203 library warning", "a Python warning", "a plain line on sys.stderr"):
        assert text in relayed, records
    assert [r["event"] for r in records if r["event"] in ("serving", "stopped")] == ["serving", "stopped"]
