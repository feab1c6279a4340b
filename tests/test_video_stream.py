"""`facedet stream SOURCE`, the video-pipeline tool, against real servers: a clip made here with
ffmpeg from a shared photo (a zoom and a pan, so every frame differs), the shared real clip, a
network stream served by ffmpeg, an RTSP stream served by GStreamer, and a folder; file and live
mode; the --blur/--draw output."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from facedet.cli import main
from facedet.client.anonymise import DEFAULT_PADDING, padded_box
from facedet.client.messages import BoundingBox
from facedet_test_support import (
    IMAGES,
    REPO,
    SHARED,
    Server,
    ServerFactory,
    arm_faults,
    clean_env,
    facedet_command,
    free_port,
    require,
    wait_for,
)

av = pytest.importorskip("av", reason="the video tool needs PyAV (in the dev extra)")

VIDEO = SHARED / "videos" / "one_face_640x480.mkv"  # 51 frames, 30 fps, one face in each
CLIP_FRAMES, CLIP_FPS = 75, 25  # the clip made from zidane.jpg: 3 s, both faces in every frame
CLIP_SECONDS = CLIP_FRAMES / CLIP_FPS
QUIET_FFMPEG = ("ffmpeg", "-hide_banner", "-loglevel", "error")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zidane.jpg zoomed in by a quarter over 3 s while panning left and right, at 640x360."""
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg not found (Debian's ffmpeg makes the test clips)", pytrace=False)
    out = tmp_path_factory.mktemp("clip") / "pan.mp4"
    motion = (
        f"zoompan=z='1+0.25*on/{CLIP_FRAMES}':x='(iw-iw/zoom)/2*(1+sin(on/12))':y='(ih-ih/zoom)/2'"
        f":d=1:s=640x360:fps={CLIP_FPS},format=yuv420p"
    )
    photo = str(require(IMAGES / "zidane.jpg", "shared image"))
    encode = ["-frames:v", str(CLIP_FRAMES), "-c:v", "libx264", "-preset", "veryfast", "-g", "25", str(out)]
    subprocess.run(
        [*QUIET_FFMPEG, "-y", "-loop", "1", "-framerate", str(CLIP_FPS), "-i", photo, "-vf", motion, *encode],
        check=True,
        timeout=120,
    )
    return out


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Server:
    return module_server_factory()


def decoded(path: Path) -> list[tuple[float, np.ndarray]]:
    """Every frame of a video as PyAV decodes it: (timestamp in seconds, BGR pixels)."""
    with av.open(str(path)) as container:
        return [(float(f.time), f.to_ndarray(format="bgr24")) for f in container.decode(video=0)]


def stream_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """`facedet stream ... --json` in this process: (exit status, the lines, stderr)."""
    status = main(["stream", *args, "--json"])
    captured = capsys.readouterr()
    return status, [json.loads(line) for line in captured.out.splitlines()], captured.err


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_every_frame_of_a_clip_in_order_with_its_timestamp_and_faces(
    server: Server, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Over the unix socket the default transport is raw pixels, over TCP JPEG: both in full.
    for target in (server.unix_target, server.target):
        status, lines, err = stream_json(capsys, str(clip), "--server", target)
        assert status == 0, err
        assert [line["index"] for line in lines] == list(range(CLIP_FRAMES))
        assert [line["timestamp"] for line in lines] == pytest.approx(
            [i / CLIP_FPS for i in range(CLIP_FRAMES)], abs=1e-3
        )
        assert [len(line["faces"]) for line in lines] == [2] * CLIP_FRAMES, target
        assert all(line["file"] == str(clip) and "dropped" not in line for line in lines)
        assert f"{CLIP_FRAMES} frames, {2 * CLIP_FRAMES} faces, 0 failed in " in err
        # The zoom moves the faces: the boxes of the first and last frames differ.
        first, last = lines[0]["faces"][0]["box"], lines[-1]["faces"][0]["box"]
        assert abs(first["x_max"] - first["x_min"]) < abs(last["x_max"] - last["x_min"])


def test_the_real_clip_frame_for_frame_as_pyav_decodes_it(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = decoded(require(VIDEO, "shared video"))
    assert len(frames) == 51
    for transport in ("jpeg", "raw"):
        status, lines, err = stream_json(
            capsys, str(VIDEO), "--server", server.unix_target, "--transport", transport, "--jpeg-quality=80"
        )
        assert status == 0, err
        assert [line["index"] for line in lines] == list(range(51))
        assert [line["timestamp"] for line in lines] == pytest.approx([t for t, _ in frames], abs=1e-6)
        assert [len(line["faces"]) for line in lines] == [1] * 51
        assert {(line["image_width"], line["image_height"]) for line in lines} == {(640, 480)}


def test_blurred_output_changes_the_faces_and_keeps_the_rest(
    server: Server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "blurred.mp4"
    status, lines, err = stream_json(
        capsys, str(clip), "--server", server.unix_target, "--output", str(out), "--blur"
    )
    assert status == 0, err
    source, written = decoded(clip), decoded(out)
    # Same frame count and timing as the input.
    assert len(written) == len(source) == CLIP_FRAMES
    assert [t for t, _ in written] == pytest.approx([t for t, _ in source], abs=1e-3)
    inside_psnr, outside_psnr = [], []
    for line, (_, before), (_, after) in zip(lines, source, written, strict=True):
        height, width = before.shape[:2]
        mask = np.zeros((height, width), bool)
        for face in line["faces"]:
            box = BoundingBox(**face["box"])
            x0, y0, x1, y1 = padded_box(box, width, height, DEFAULT_PADDING)
            mask[y0:y1, x0:x1] = True
            # The face itself (the unpadded box) is what must no longer be recognisable.
            core = (slice(round(box.y_min), round(box.y_max)), slice(round(box.x_min), round(box.x_max)))
            inside_psnr.append(psnr(before[core], after[core]))
        outside_psnr.append(psnr(before[~mask], after[~mask]))
    assert len(inside_psnr) == 2 * CLIP_FRAMES
    assert max(inside_psnr) < 24, sorted(inside_psnr)[-5:]  # about 17 dB at most here
    # Outside, only the output's own H.264 encoding (CRF 18) differs: about 38-40 dB here.
    assert min(outside_psnr) > 33, sorted(outside_psnr)[:5]


def test_drawn_output_of_the_real_clip(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "drawn.mp4"
    status, lines, err = stream_json(
        capsys, str(VIDEO), "--server", server.target, "--output", str(out), "--draw", "--every", "5"
    )
    assert status == 0, err
    assert [line["index"] for line in lines] == list(range(0, 51, 5))  # lines for the frames sent
    source, written = decoded(VIDEO), decoded(out)
    assert len(written) == 51  # every frame written, those not sent with the faces before them
    assert [t for t, _ in written] == pytest.approx([t for t, _ in source], abs=1e-3)
    box = lines[0]["faces"][0]["box"]
    top = round(box["y_min"])
    row = slice(round(box["x_min"]) + 2, round(box["x_max"]) - 2)
    # The box's top edge is drawn in green (BGR 0, 255, 0) over whatever was there.
    edge = written[0][1][top, row].astype(int)
    assert (edge[:, 1] - edge[:, [0, 2]].max(axis=1)).mean() > 100


def slow_server(start_server: ServerFactory, tmp_path: Path) -> Server:
    """A server several times slower than the clip's 25 frames/s on any machine: every model run
    takes 150 ms longer (the test-only fault switch, runtime/faults.py), one run at a time. A slow
    model alone is slow only on a slow or busy machine, and a batch delay only applies while
    the workers are busy."""
    control = tmp_path / "faults"
    server = start_server("--batch-workers", "1", env={"FACEDET_FAULT_INJECTION": str(control)})
    arm_faults(control, "100000 slow 150")
    return server


def test_live_mode_against_a_slow_server_drops_frames_and_keeps_real_time(
    start_server: ServerFactory, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slow = slow_server(start_server, tmp_path)
    out = tmp_path / "live.mp4"
    started = time.monotonic()
    status, lines, err = stream_json(
        capsys, str(clip), "--server", slow.unix_target, "--mode", "live", "--output", str(out), "--blur"
    )
    elapsed = time.monotonic() - started
    assert status == 0, err
    # Every frame is accounted for, in order: answered with faces, or dropped.
    assert [line["index"] for line in lines] == list(range(CLIP_FRAMES))
    dropped = [line for line in lines if line.get("dropped")]
    detected = [line for line in lines if not line.get("dropped")]
    assert dropped and detected, err
    assert all(len(line["faces"]) == 2 for line in detected)
    assert all(line["faces"] == [] and line["dropped_by"] in ("client", "server") for line in dropped)
    assert f", {len(dropped)} dropped (" in err
    # Real time: the clip's 3 s plus one slow answer, not 75 slow answers.
    assert elapsed < CLIP_SECONDS + 3.0, err
    assert len(decoded(out)) == CLIP_FRAMES  # the output still has every frame


def test_live_mode_counts_the_frames_the_server_drops(
    start_server: ServerFactory, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A wide window hands the slow server several frames at once: its own live mode
    # (options.live) runs the newest and answers the older ones as dropped.
    slow = slow_server(start_server, tmp_path)
    status, lines, err = stream_json(
        capsys, str(clip), "--server", slow.unix_target, "--mode", "live", "--window", "6"
    )
    assert status == 0, err
    assert [line["index"] for line in lines] == list(range(CLIP_FRAMES))
    by_server = [line for line in lines if line.get("dropped_by") == "server"]
    assert by_server, err
    assert all(line["dropped"] and line["faces"] == [] for line in by_server)
    here = sum(1 for line in lines if line.get("dropped_by") == "client")
    assert f"({here} here, {len(by_server)} by the server)" in err


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`, read from /proc (connecting to find out
    would take the one client ffmpeg's -listen 1 serves)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                return True
    return False


def test_a_network_stream_served_by_ffmpeg(
    server: Server, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    # -re: ffmpeg sends at the clip's own pace, as a camera or a relay would.
    ffmpeg = subprocess.Popen(
        [*QUIET_FFMPEG, "-re", "-i", str(clip), "-c", "copy", "-f", "mpegts", "-listen", "1", url]
    )
    try:
        wait_for(lambda: _listening(port), 20, "ffmpeg to listen")
        started = time.monotonic()
        status, lines, err = stream_json(capsys, url, "--server", server.target, "--mode", "file")
        elapsed = time.monotonic() - started
    finally:
        ffmpeg.kill()
        ffmpeg.wait(10)
    assert status == 0, err
    assert [line["index"] for line in lines] == list(range(CLIP_FRAMES))
    # MPEG-TS shifts every timestamp by the same start offset; the spacing is the clip's.
    times = np.array([line["timestamp"] for line in lines])
    assert np.diff(times) == pytest.approx(1 / CLIP_FPS, abs=1e-3)
    assert [len(line["faces"]) for line in lines] == [2] * CLIP_FRAMES
    assert elapsed > CLIP_SECONDS * 0.7  # it came at the source's pace, not as a file would


SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with PyGObject and GStreamer from apt
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")


@contextlib.contextmanager
def rtsp_stream(clip: Path) -> Iterator[str]:
    """A real RTSP server (GStreamer's, tests/rtsp_server.py) serving `clip`: its URL. Fails,
    saying what is missing, where GStreamer's RTSP server is not installed."""
    rtsp = subprocess.Popen(
        [SYSTEM_PYTHON, str(RTSP_SERVER), str(clip)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert rtsp.stdout is not None
        port = rtsp.stdout.readline().strip()
        if not port.isdigit():
            rtsp.kill()
            _, err = rtsp.communicate(timeout=10)
            pytest.fail(
                f"tests/rtsp_server.py did not start (`make test-deps` installs GStreamer's RTSP "
                f"server for /usr/bin/python3): {err.strip()[-1000:]}",
                pytrace=False,
            )
        yield f"rtsp://127.0.0.1:{port}/clip"
    finally:
        rtsp.kill()
        rtsp.wait(10)


def test_an_rtsp_stream_over_tcp_frame_for_frame(
    server: Server, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/sidecar.md's own example: an RTSP camera or relay, RTP interleaved on the RTSP
    connection (`--input-option rtsp_transport=tcp`). In file mode nothing may be dropped, so
    every frame comes, in order, at the source's pace, with both faces."""
    with rtsp_stream(clip) as url:
        started = time.monotonic()
        status, lines, err = stream_json(
            capsys, url, "--server", server.target, "--input-option", "rtsp_transport=tcp", "--mode", "file"
        )
        elapsed = time.monotonic() - started
    assert status == 0, err
    assert [line["index"] for line in lines] == list(range(CLIP_FRAMES))
    times = np.array([line["timestamp"] for line in lines])
    assert np.diff(times) == pytest.approx(1 / CLIP_FPS, abs=2e-3)
    assert [len(line["faces"]) for line in lines] == [2] * CLIP_FRAMES
    assert elapsed > CLIP_SECONDS * 0.7  # at the source's pace, not as a file would come


def test_an_rtsp_stream_over_udp_in_the_default_live_mode(
    server: Server, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RTSP's default transport (RTP on UDP) with no flags but the server: a network stream
    gets live mode, so a frame the server cannot take in time is dropped and counted, never
    queued. On loopback UDP loses nothing in practice; should the kernel drop a packet on a busy
    machine, FFmpeg skips what it cannot decode, so a few frames may be missing, none reordered."""
    with rtsp_stream(clip) as url:
        status, lines, err = stream_json(capsys, url, "--server", server.target)
    assert status == 0, err
    indices = [line["index"] for line in lines]
    assert indices == list(range(len(lines))) and len(lines) >= CLIP_FRAMES - 3, (len(lines), err)
    detected = [line for line in lines if not line.get("dropped")]
    # How many are detected is the machine's speed against the frames' pace (28-39 of 75 on the
    # idle 2-core development machine, 27 on a CI runner, where a bound of half the frames
    # failed): the test asks only that live mode answers frames, not only drops them.
    assert len(detected) >= 10, err
    assert all(len(line["faces"]) == 2 for line in detected)
    dropped = len(lines) - len(detected)
    assert f"{len(lines)} frames, " in err and f", {dropped} dropped (" in err  # the live summary


def test_a_folder_as_a_video(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a_bus.jpg", "b_zidane.jpg", "c_sample.jpg"):  # three sizes: scaled to the first
        shutil.copy(IMAGES / name.split("_", 1)[1], folder / name)
    out = tmp_path / "folder.mp4"
    status, lines, err = stream_json(
        capsys, str(folder), "--server", server.unix_target, "--transport", "raw", "--output", str(out)
    )
    assert status == 0, err
    assert [line["file"] for line in lines] == [str(p) for p in sorted(folder.iterdir())]
    assert [len(line["faces"]) for line in lines] == [2, 2, 8]
    written = decoded(out)
    assert [t for t, _ in written] == pytest.approx([0, 1 / 30, 2 / 30], abs=1e-3)


def test_a_progress_line_on_a_terminal_only(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    master, terminal = os.openpty()
    try:
        done = subprocess.run(
            facedet_command("stream", str(VIDEO), "--server", server.target, "--max-frames", "20"),
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=clean_env(),
            cwd=REPO,
            timeout=120,
            check=False,
        )
        os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed
            while chunk := os.read(master, 4096):
                shown += chunk
    finally:
        os.close(master)
    assert done.returncode == 0
    assert re.search(rb"\r\d+ frames  [\d.]+ fps  0 dropped", shown), shown
    assert b"\r" not in done.stdout  # the frame lines and the summary stay plain
    # Not a terminal (as in every other test here): no progress line at all.
    assert main(["stream", str(VIDEO), "--server", server.target, "--max-frames", "3"]) == 0
    assert capsys.readouterr().err == ""


def test_bad_sources_and_arguments_say_what_is_wrong(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stream", str(VIDEO), "--server", server.target, "--blur"]) == 1
    assert "--draw and --blur need --output" in capsys.readouterr().err
    refused = f"http://127.0.0.1:{free_port()}/nothing.ts"
    assert main(["stream", refused, "--server", server.target, "--open-timeout", "2"]) == 1
    assert f"cannot open {refused}" in capsys.readouterr().err
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    assert main(["stream", str(not_video), "--server", server.target]) == 1
    assert f"cannot open {not_video}" in capsys.readouterr().err
    assert main(["stream", str(VIDEO), "--server", server.target, "--input-option", "novalue"]) == 1
    assert "--input-option wants KEY=VALUE" in capsys.readouterr().err
