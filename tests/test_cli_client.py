"""`facedet detect` and `facedet stream` against a real server (subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from facedet.cli import main
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_test_support import SHARED, ServerFactory, free_port, run_cli, silent_listener
from google.protobuf.json_format import MessageToDict

IMAGES = SHARED / "images"
ZIDANE, BUS = IMAGES / "zidane.jpg", IMAGES / "bus.jpg"
VIDEO = SHARED / "videos" / "one_face_640x480.mkv"


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> tuple[str, str]:
    """(tcp target, unix target) of one `facedet serve` subprocess (tests/conftest.py's Server)."""
    running = module_server_factory("--summary-interval", "0", "--log-level", "warning")
    return running.target, running.unix_target


def without_timing(message: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in message.items() if k != "timing"}


def direct(target: str, path: Path) -> dict[str, object]:
    """The server's own answer in the proto JSON mapping, without going through the client."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.FaceDetectorStub(channel)  # type: ignore[no-untyped-call]
        response = stub.DetectFaces(pb.DetectFacesRequest(encoded=path.read_bytes()))
    return MessageToDict(response, preserving_proto_field_name=True)


# --- detect -------------------------------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_detect_json_mirrors_the_proto_mapping(
    server: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["detect", str(ZIDANE), "--server", server[0], "--json"]) == 0
    [printed] = json_lines(capsys.readouterr().out)
    assert printed.pop("file") == str(ZIDANE)
    assert without_timing(printed) == without_timing(direct(server[0], ZIDANE))
    assert set(printed["timing"]) >= {"decode_us", "inference_us", "total_us", "batch_size"}
    assert len(printed["faces"]) == 2
    assert set(printed["faces"][0]["landmarks"]) == {
        "left_eye",
        "right_eye",
        "nose",
        "mouth_left",
        "mouth_right",
    }


def test_detect_json_several_images_is_json_lines(
    server: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["detect", str(ZIDANE), str(BUS), "--server", server[1], "--json"]) == 0
    printed = json_lines(capsys.readouterr().out)
    assert [p.pop("file") for p in printed] == [str(ZIDANE), str(BUS)]
    assert [without_timing(p) for p in printed] == [
        without_timing(direct(server[0], ZIDANE)),
        without_timing(direct(server[0], BUS)),
    ]


def test_detect_human_output_and_options(server: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", str(ZIDANE), "--server", server[0]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{ZIDANE}: 2 faces in 1280x720")
    assert len(lines) == 3 and all("confidence" in line for line in lines[1:])
    assert main(["detect", str(ZIDANE), "--server", server[0], "--min-confidence", "0.84"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(f"{ZIDANE}: 1 face in")


def test_detect_draw_writes_a_png(
    server: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "drawn.png"
    assert main(["detect", str(ZIDANE), "--server", server[0], "--draw", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    drawn = cv2.imread(str(out))
    original = cv2.imread(str(ZIDANE), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert drawn is not None and original is not None
    assert drawn.shape == (720, 1280, 3)
    assert bool(np.any(drawn != original))  # something was drawn
    folder = tmp_path / "many"
    assert main(["detect", str(ZIDANE), str(BUS), "--server", server[0], "--draw", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["bus.png", "zidane.png"]
    capsys.readouterr()


def test_detect_failures(server: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not really a jpeg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(ZIDANE.read_bytes()[:5000])
    images = [junk, tmp_path / "missing.jpg", empty, truncated, tmp_path, ZIDANE]
    status = main(["detect", *map(str, images), "--server", server[0], "--json"])
    assert status == 1
    captured = capsys.readouterr()
    printed = json_lines(captured.out)
    assert [p["file"] for p in printed] == list(map(str, images))
    problems = ["neither JPEG nor PNG", "no such file", "empty (0 bytes)", "corrupt or truncated", "folder"]
    for line, image, problem in zip(printed, images, problems, strict=False):
        assert set(line) == {"file", "error"}
        assert line["error"]["code"] == "INVALID_ARGUMENT"  # the name, not 3
        assert line["error"]["message"].startswith(f"{image}: ") and problem in line["error"]["message"]
    assert len(printed[-1]["faces"]) == 2
    assert "Traceback" not in captured.err and "cv2.error" not in captured.err
    assert (
        f"facedet detect: INVALID_ARGUMENT: {empty}: the file is empty (0 bytes)" in captured.err.splitlines()
    )

    assert main(["detect", str(ZIDANE), "--server", f"127.0.0.1:{free_port()}"]) == 3
    assert "not available" in capsys.readouterr().err


def test_detect_an_empty_file_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    # Nothing listens: the file's problem is found before any call.
    done = run_cli("detect", str(tmp_path / "empty.jpg"), "--server", f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"facedet detect: INVALID_ARGUMENT: {tmp_path / 'empty.jpg'}: the file is empty (0 bytes)"
    )


def test_detect_a_large_bmp_is_reencoded(
    server: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.bmp"  # 24.9 MB: over the server's 16 MiB limit as raw pixels
    image = cv2.imread(str(ZIDANE))
    assert image is not None and cv2.imwrite(str(big), cv2.resize(image, (3840, 2160)))
    assert big.stat().st_size > 16 * 1024 * 1024
    assert main(["detect", str(big), "--server", server[0]]) == 0
    assert capsys.readouterr().out.startswith(f"{big}: 2 faces in 3840x2160")


def test_a_silent_server_gives_one_clear_timeout() -> None:
    with silent_listener() as target:
        for flags, seconds in ((["--connect-timeout", "1"], "1"), (["--timeout", "1.5"], "1.5")):
            started = time.monotonic()
            done = run_cli("detect", str(ZIDANE), "--server", target, *flags)
            assert time.monotonic() - started < 15
            assert done.returncode == 3, done.stderr
            assert f"no FaceDetector answered at {target} within {seconds} s" in done.stderr
        done = run_cli("stream", str(VIDEO), "--server", target, "--connect-timeout", "1")
        assert done.returncode == 3 and f"no FaceDetector answered at {target} within 1 s" in done.stderr


def test_help_documents_the_exit_status_and_timeouts() -> None:
    for command in ("detect", "stream"):
        done = run_cli(command, "--help")
        assert done.returncode == 0
        assert "exit status:" in done.stdout and "3  no FaceDetector answered" in done.stdout
        assert "--connect-timeout" in done.stdout and "connecting included" in done.stdout


def test_a_server_without_a_port_means_50051() -> None:
    done = run_cli("detect", str(ZIDANE), "--server", "127.0.0.1", "--connect-timeout", "2")
    # Whatever listens on this machine's 50051 (usually nothing), 443 is not what was dialled.
    assert done.returncode in (0, 1) or "127.0.0.1:50051" in done.stderr, done.stderr


def test_detect_command_line_and_env_server(server: tuple[str, str]) -> None:
    env = {**os.environ, "FACEDET_SERVER": server[1]}
    done = subprocess.run(
        [sys.executable, "-m", "facedet.cli", "detect", str(BUS)],
        env=env,
        capture_output=True,
        check=False,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{BUS}: 2 faces")


# --- stream -------------------------------------------------------------------------------------


def test_stream_video(server: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    # Every other frame of the whole video keeps the test quick on a small CPU.
    assert main(["stream", str(VIDEO), "--server", server[0], "--every", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:26] == [f"frame {i}: 1 face" for i in range(0, 51, 2)]
    assert lines[26].startswith("26 frames, 26 faces, 0 failed in ")
    assert lines[26].endswith("frames/s")

    assert (
        main(["stream", str(VIDEO), "--server", server[1], "--every", "10", "--max-frames", "3", "--jpeg"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["frame 0: 1 face", "frame 10: 1 face", "frame 20: 1 face"]
    assert lines[3].startswith("3 frames, 3 faces")


def test_stream_folder_json(
    server: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("c_zidane.jpg", "a_bus.jpg", "b_sample.jpg"):
        shutil.copy(IMAGES / name.split("_", 1)[1], tmp_path / name)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "d_broken.jpg").write_bytes(b"broken")
    assert main(["stream", str(tmp_path), "--server", server[0], "--json"]) == 1
    captured = capsys.readouterr()
    responses = json_lines(captured.out)
    names = ["a_bus.jpg", "b_sample.jpg", "c_zidane.jpg", "d_broken.jpg"]
    assert [r["file"] for r in responses] == [str(tmp_path / name) for name in names]
    assert [len(r["faces"]) for r in responses[:3]] == [2, 8, 2]
    assert [r.get("frame_id", "0") for r in responses] == ["0", "1", "2", "3"]  # uint64: a JSON string
    # A failed frame: the same shape as a failed image of detect --json.
    assert set(responses[3]) == {"file", "frame_id", "error"}
    assert responses[3]["error"]["code"] == "INVALID_ARGUMENT"
    assert responses[3]["error"]["message"].startswith(f"{tmp_path / 'd_broken.jpg'}: ")
    assert "4 frames, 12 faces, 1 failed" in captured.err


def test_stream_video_json(server: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", str(VIDEO), "--server", server[0], "--json", "--max-frames", "2"]) == 0
    responses = json_lines(capsys.readouterr().out)
    assert [r["file"] for r in responses] == [str(VIDEO)] * 2
    assert [len(r["faces"]) for r in responses] == [1, 1]


def test_stream_failures(server: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", str(tmp_path / "nothing.mkv"), "--server", server[0]]) == 1
    assert "no such video file or folder" in capsys.readouterr().err
    assert main(["stream", str(tmp_path), "--server", server[0]]) == 1  # an empty folder
    assert "no .jpg" in capsys.readouterr().err
    (tmp_path / "a.jpg").write_bytes(b"broken")
    shutil.copy(ZIDANE, tmp_path / "b.jpg")
    assert main(["stream", str(tmp_path), "--server", server[0]]) == 1
    out = capsys.readouterr().out
    assert f"frame 0: INVALID_ARGUMENT: {tmp_path / 'a.jpg'}: " in out and "frame 1: 2 faces" in out
    assert main(["stream", str(VIDEO), "--server", f"127.0.0.1:{free_port()}"]) == 3
