"""A real RTSP server for the video tool's tests: GStreamer's gst-rtsp-server (Debian's
gir1.2-gst-rtsp-server-1.0, `make test-deps`) serving one H.264 file at rtsp://127.0.0.1:PORT/clip,
the way a camera or a relay does: DESCRIBE, SETUP (RTP interleaved on TCP or on UDP), PLAY, the
frames at their own pace, and an RTCP BYE at the end, which FFmpeg reads as the end of stream.

Run by Debian's own python3 (PyGObject comes from apt, not pip), never imported by the tests:

    /usr/bin/python3 tests/rtsp_server.py CLIP.mp4

prints the port it listens on (chosen by the kernel) on one line, then serves until killed. Each
client gets its own pipeline, from the first frame.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402  (after require_version)

MOUNT = "/clip"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print("usage: rtsp_server.py CLIP.mp4 (an H.264 MP4 file)", file=sys.stderr)
        return 2
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service("0")
    factory = GstRtspServer.RTSPMediaFactory()
    # No re-encoding: the file's own H.264, packetised for RTP with the parameter sets repeated
    # before every key frame, as cameras send them.
    factory.set_launch(
        f'( filesrc location="{argv[0]}" ! qtdemux ! rtph264pay name=pay0 pt=96 config-interval=-1 )'
    )
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        print("rtsp_server.py: could not listen on 127.0.0.1", file=sys.stderr)
        return 1
    print(server.get_bound_port(), flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
