"""The README's "Two commands" and "Try it" sections, run as written: `make serve` in the
background, then every shell command of "Try it" against it, each checked for exit status 0 and
for what the README says it prints. A command added to those sections without a check here fails.

What differs from a user's machine, on purpose:
- The port. The server gets a free port P instead of 50051, so that a server of the developer's
  own on 50051 neither breaks this test nor answers it. Every 50051 of the README becomes P: in
  the commands' text, and in the variables behind the defaults that are 50051 (FACEDET_LISTEN
  for `make serve`, FACEDET_SERVER for the `facedet` client).
- `make serve` is run with `--old-file .venv/.serve-installed`: the venv is the one these tests
  run in (`make test` set it up), and a stamp older than pyproject.toml must not make a test
  reinstall it under the other tests' feet.
- The "Try it" commands run as from a second shell: without the Makefile's FACEDET_MODEL_DIR,
  offline (proxies at a closed port, localhost excepted), in a folder laid out like the checkout
  (`.venv` and `../shared` linked there, so that what they write, out.png, stays out of the tree).
  $FACEDET_HOME, the cache, is a temporary folder for `make serve` and for them alike.
`make test` is not run: it is what runs this test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from facedet_server.model.files import REGISTRY, sha256_of
from facedet_test_support import (
    EXPECTED_FACES,
    REPO,
    SHARED,
    START_TIMEOUT,
    clean_env,
    free_port,
    health_status,
    require,
    shell_commands,
    wait_for,
    without_comment,
)
from grpc_health.v1 import health_pb2

README = REPO / "README.md"
README_PORT = "50051"
MODEL = REGISTRY["yolov5n-0.5"]


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


README_TEXT = README.read_text()
TWO_COMMANDS = [without_comment(c) for c in shell_commands(section(README_TEXT, "Two commands"))]
TRY_IT = shell_commands(section(README_TEXT, "Try it"))


@dataclass(frozen=True)
class Served:
    """`make serve` running on port P, and where the "Try it" commands run."""

    port: int
    home: Path  # $FACEDET_HOME: the cache
    workdir: Path  # laid out like the checkout
    env: dict[str, str]  # a second shell's environment
    log: Path

    def records(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def offline_env(home: Path, port: int) -> dict[str, str]:
    env = clean_env({"FACEDET_HOME": str(home), "FACEDET_SERVER": f"localhost:{port}"})
    for name in ("all_proxy", "ALL_PROXY", "grpc_proxy", "no_grpc_proxy"):
        env.pop(name, None)
    closed = f"http://127.0.0.1:{free_port()}"
    env.update(http_proxy=closed, https_proxy=closed, HTTP_PROXY=closed, HTTPS_PROXY=closed)
    env.update(no_proxy="localhost,127.0.0.1", NO_PROXY="localhost,127.0.0.1")
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    venv = REPO / ".venv"
    require(venv / "bin" / "facedet", "the README's .venv (make setup-dev makes it)")
    make = shutil.which("make")
    assert make is not None, "make is not installed"
    root = tmp_path_factory.mktemp("readme")
    home, workdir, log = root / "home", root / "checkout", root / "make-serve.log"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(venv)
    (root / "shared").symlink_to(require(SHARED, "shared data folder").resolve())
    port = free_port()
    make_env = {k: v for k, v in clean_env().items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    make_env.update(SHARED=str(SHARED), FACEDET_HOME=str(home), FACEDET_LISTEN=f"0.0.0.0:{port}")
    assert TWO_COMMANDS[0] == "make serve"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [make, "--old-file", str(venv / ".serve-installed"), *TWO_COMMANDS[0].split()[1:]],
            cwd=REPO,
            env=make_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make and the server it runs: one group, stopped together
        )
        try:

            def serving() -> bool:
                assert process.poll() is None, f"make serve exited:\n{log.read_text()}"
                try:
                    return bool(health_status(f"127.0.0.1:{port}") == health_pb2.HealthCheckResponse.SERVING)
                except grpc.RpcError:
                    return False

            wait_for(serving, START_TIMEOUT, "make serve to report SERVING", interval=0.1)
            yield Served(port, home, workdir, offline_env(home, port), log)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is gone already
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def test_the_sections_have_the_commands_checked_here() -> None:
    assert TWO_COMMANDS == ["make serve", "make test"]
    assert [without_comment(c) for c in TRY_IT] == list(CHECKS), "a README command needs a check here"


def test_make_serve_fills_the_cache_and_serves_on_its_address(served: Served) -> None:
    cached = served.home / "models" / MODEL.filename
    assert sha256_of(cached) == MODEL.sha256
    output = served.log.read_text()
    assert f"{cached}\n" in output, output  # what `facedet models pull` printed
    assert "Traceback" not in output, output
    events = {r["event"]: r for r in served.records()}
    address = [f"0.0.0.0:{served.port}"]
    assert events["listening"]["addresses"] == events["serving"]["addresses"] == address


def faces(stdout: str) -> int:
    return len(json.loads(stdout)["faces"])


def check_list(stdout: str, _: Served) -> None:
    services = stdout.split()
    assert services[0] == "facedet.v1.FaceDetector", stdout
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(services)


def check_describe(stdout: str, _: Served) -> None:
    assert "facedet.v1.Face is a message" in stdout, stdout
    for field in ("box = 1;", "confidence = 2;", "landmarks = 3;"):
        assert field in stdout, stdout


def check_model_info(stdout: str, _: Served) -> None:
    assert json.loads(stdout)["name"] == MODEL.name, stdout


def check_health(stdout: str, _: Served) -> None:
    assert json.loads(stdout) == {"status": "SERVING"}, stdout


def check_detect_base64(stdout: str, _: Served) -> None:
    assert faces(stdout) == EXPECTED_FACES["zidane.jpg"], stdout


def check_detect(stdout: str, _: Served) -> None:
    image, *rows = stdout.splitlines()
    assert image.startswith("../shared/images/zidane.jpg: 2 faces"), stdout
    assert len(rows) == EXPECTED_FACES["zidane.jpg"], stdout


def check_draw(stdout: str, served: Served) -> None:
    assert faces(stdout) == EXPECTED_FACES["sample.jpg"], stdout
    assert (served.workdir / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_stream(stdout: str, _: Served) -> None:
    *lines, last = stdout.splitlines()
    total = re.fullmatch(r"(\d+) frames, (\d+) faces, 0 failed in .*", last)
    assert total is not None, stdout
    frames = [line for line in lines if re.fullmatch(r"frame \d+: 1 face", line)]
    assert len(frames) == int(total[1]) == int(total[2]) > 0, stdout


def check_bench(stdout: str, _: Served) -> None:
    assert re.search(r"[\d.]+ img/s +\(\d+ images, errors: none\)", stdout), stdout
    assert "latency ms" in stdout, stdout


def check_pull(stdout: str, served: Served) -> None:
    assert stdout.strip() == str(served.home / "models" / MODEL.filename), stdout


# Every "Try it" command, as the README has it (less its trailing comment), and what it must print.
CHECKS: dict[str, Callable[[str, Served], None]] = {
    ".venv/bin/grpcurl -plaintext localhost:50051 list": check_list,
    ".venv/bin/grpcurl -plaintext localhost:50051 describe facedet.v1.Face": check_describe,
    ".venv/bin/grpcurl -plaintext -d '{}' localhost:50051 facedet.v1.FaceDetector/GetModelInfo": (
        check_model_info
    ),
    """.venv/bin/grpcurl -plaintext -d '{"service": "facedet.v1.FaceDetector"}' localhost:50051 """
    "grpc.health.v1.Health/Check": check_health,
    r"""echo "{\"encoded\": \"$(base64 -w0 ../shared/images/zidane.jpg)\", \"options\": """
    r"""{\"min_confidence\": 0.5}}" | .venv/bin/grpcurl -plaintext -d @ localhost:50051 """
    "facedet.v1.FaceDetector/DetectFaces": check_detect_base64,
    ".venv/bin/facedet detect ../shared/images/zidane.jpg": check_detect,
    ".venv/bin/facedet detect ../shared/images/sample.jpg --json --draw out.png": check_draw,
    ".venv/bin/facedet stream ../shared/videos/one_face_640x480.mkv": check_stream,
    ".venv/bin/facedet bench --server localhost:50051 --image ../shared/images/zidane.jpg "
    "--concurrency 16 --duration 5": check_bench,
    ".venv/bin/facedet bench --server localhost:50051 --image ../shared/images/zidane.jpg "
    "--rate 20 --duration 5": check_bench,
    ".venv/bin/facedet models pull yolov5n-0.5": check_pull,
}


@pytest.mark.parametrize("command", TRY_IT, ids=[without_comment(c)[:60] for c in TRY_IT])
def test_try_it_command(served: Served, command: str) -> None:
    check = CHECKS.get(without_comment(command))
    assert check is not None, f"no check for the README command {command!r}"
    text = command.replace(f":{README_PORT}", f":{served.port}")
    result = subprocess.run(
        ["sh", "-c", text],
        cwd=served.workdir,
        env=served.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{text}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
    check(result.stdout, served)
