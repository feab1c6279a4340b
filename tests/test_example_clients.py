"""The Go and C++ example clients (clients/go and clients/cpp: `build/clients/facedet-go` and
`facedet-cpp`) against real `facedet serve` processes, by one command-line contract: the same
faces as the Python client (`facedet detect --json`, `facedet stream --json`) over TCP and a unix
socket, JSON Lines, error lines and exit statuses, one bidirectional stream in order, TLS +
mutual TLS + the bearer token, round_robin over two servers and a server killed mid-run.

Every test runs once per client (the module-scoped `client` fixture, ids go and cpp); where the
two differ only in wording (their names, their gRPC library's messages) the difference is a field
of ExampleClient. What only one client has is in its own module (tests/test_client_go.py).

Each binary is built first (go_client_support, cpp_client_support). Where it cannot be built the
tests skip, saying why, unless FACEDET_REQUIRE_CLIENTS=1 (CI sets it): then they fail.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cpp_client_support
import go_client_support
import pytest
from cli_contract_support import Record, records, same, without_timing
from facedet_test_support import (
    EXPECTED_FACES,
    IMAGES,
    PHOTOS,
    Server,
    ServerFactory,
    clean_env,
    free_port,
    run_cli,
    silent_listener,
    wait_for,
)
from pki_support import Pki
from pki_support import start_checked_over_unix as start_unix_checked

# The flags every client names as the Python client does.
SHARED_FLAGS = ("--server", "--json", "--timeout", "--connect-timeout", "--tls-ca", "--tls-cert", "--tls-key")


@dataclass(frozen=True)
class ExampleClient:
    name: str  # the program's name: its usage and error lines start with it
    binary: Path
    refused: str  # how its gRPC library words a refused connection

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=timeout,
            check=False,
        )


# How each client is built (or found), and what it says in its own words.
CLIENTS: dict[str, tuple[Callable[[], Path], str, str]] = {
    "go": (go_client_support.build_client, "facedet-go", "connection refused"),  # grpc-go
    "cpp": (cpp_client_support.build_client, "facedet-cpp", "Connection refused"),  # gRPC C++
}


@pytest.fixture(scope="module", params=list(CLIENTS))
def client(request: pytest.FixtureRequest) -> ExampleClient:
    """One example client, built first so that the tests never run a stale binary."""
    build, name, refused = CLIENTS[request.param]
    return ExampleClient(name=name, binary=build(), refused=refused)


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Server:
    """One server (TCP and unix socket) for the module; its summaries count calls for round_robin."""
    return module_server_factory("--summary-interval", "0.5")


@pytest.fixture(scope="module")
def python_records(server: Server) -> dict[str, Record]:
    """What the Python client prints for every shared photo, by file."""
    photos = [str(IMAGES / name) for name in PHOTOS]
    result = run_cli("detect", *photos, "--server", server.target, "--json")
    assert result.returncode == 0, result.stderr
    return {r["file"]: r for r in records(result.stdout)}


@pytest.mark.parametrize("transport", ["tcp", "unix", "unix-short"])
def test_detect_gives_the_python_clients_faces(
    client: ExampleClient, server: Server, python_records: dict[str, Record], transport: str
) -> None:
    target = {
        "tcp": server.target,
        "unix": server.unix_target,  # unix:///abs/path
        "unix-short": f"unix:{server.socket_path}",
    }[transport]
    photos = [str(IMAGES / name) for name in PHOTOS]
    result = client.run("detect", *photos, "--server", target, "--json")
    assert result.returncode == 0, result.stderr
    got = records(result.stdout)
    assert [r["file"] for r in got] == photos
    for record in got:
        want = python_records[record["file"]]
        # Every field the Python client prints, named as it names them; only the timings differ.
        assert set(record["timing"]) == set(want["timing"]), record["timing"]
        same(without_timing(record), without_timing(want), record["file"])
    counts = {Path(r["file"]).name: len(r.get("faces", [])) for r in got}
    assert {name: counts[name] for name in EXPECTED_FACES} == EXPECTED_FACES


def test_detect_human_output_and_options(client: ExampleClient, server: Server) -> None:
    zidane = str(IMAGES / "zidane.jpg")
    result = client.run("detect", zidane, "--server", server.target)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{zidane}: 2 faces in 1280x720 (server "), lines
    assert len(lines) == 3 and all("confidence 0." in line for line in lines[1:]), lines
    # The options reach the server: one face at most, and none above an impossible confidence.
    one = records(
        client.run("detect", zidane, "--server", server.target, "--json", "--max-faces", "1").stdout
    )
    assert len(one[0]["faces"]) == 1
    none = client.run("detect", zidane, "--server", server.target, "--json", "--min-confidence", "0.999")
    assert none.returncode == 0 and "faces" not in records(none.stdout)[0]


def test_a_failed_image_is_an_error_line_and_exit_1(
    client: ExampleClient, server: Server, tmp_path: Path
) -> None:
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    zidane = str(IMAGES / "zidane.jpg")
    files = [str(not_image), zidane, str(missing), str(empty), str(tmp_path)]
    result = client.run("detect", *files, "--server", server.target, "--json")
    assert result.returncode == 1, result
    got = records(result.stdout)
    assert [r["file"] for r in got] == files  # the good image is still detected, in its place
    assert len(got[1]["faces"]) == 2 and "error" not in got[1]
    for record in (got[0], *got[2:]):
        assert set(record) == {"file", "error"}, record
        assert record["error"]["code"] == "INVALID_ARGUMENT", record
        assert record["error"]["message"].startswith(f"{record['file']}: "), record
    assert "not a JPEG or PNG" in got[0]["error"]["message"]  # the server's reason
    assert got[2]["error"]["message"].endswith("no such file")
    assert got[3]["error"]["message"].endswith("empty (0 bytes)")
    assert got[4]["error"]["message"].endswith("is a folder, not an image file")
    assert f"{client.name} detect: INVALID_ARGUMENT: " in result.stderr


@pytest.fixture
def frames_folder(tmp_path: Path) -> tuple[Path, list[str]]:
    """Twelve frames written in reverse order (so the folder's listing order is not name order),
    a file that is not an image as frame 5, an upper-case suffix, and a text file that is not a
    frame."""
    folder = tmp_path / "frames"
    folder.mkdir()
    sources = [PHOTOS[i % len(PHOTOS)] for i in range(12)]
    for index in reversed(range(len(sources))):
        data = b"garbage" if index == 5 else (IMAGES / sources[index]).read_bytes()
        suffix = ".JPEG" if index == 7 else ".jpg"
        (folder / f"frame-{index:03d}{suffix}").write_bytes(data)
    (folder / "README.txt").write_text("not a frame")
    return folder, sources


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_stream_sends_the_folder_in_order(
    client: ExampleClient,
    server: Server,
    python_records: dict[str, Record],
    frames_folder: tuple[Path, list[str]],
    transport: str,
) -> None:
    folder, sources = frames_folder
    target = server.target if transport == "tcp" else server.unix_target
    result = client.run("stream", str(folder), "--server", target, "--json")
    assert result.returncode == 1, result  # frame 5 failed; the stream went on
    got = records(result.stdout)
    assert len(got) == len(sources)
    for index, record in enumerate(got):
        assert record.get("frame_id", "0") == str(index), record  # uint64: a string in proto JSON
        assert Path(record["file"]).stem == f"frame-{index:03d}"
        if index == 5:
            assert record["error"]["code"] == "INVALID_ARGUMENT", record
            assert record["error"]["message"].startswith(f"{record['file']}: ")
            continue
        want = without_timing(python_records[str(IMAGES / sources[index])])
        same({k: v for k, v in without_timing(record).items() if k not in ("file", "frame_id")},
             {k: v for k, v in want.items() if k != "file"}, record["file"])  # fmt: skip
    assert "12 frames" in result.stderr and "1 failed" in result.stderr  # the summary, not on stdout

    (folder / "frame-005.jpg").unlink()
    human = client.run("stream", str(folder), "--server", target, "--every", "2", "--max-frames", "4")
    assert human.returncode == 0, human
    lines = human.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["frame 0", "frame 2", "frame 4", "frame 6"]
    assert lines[-1].startswith("4 frames, ")


def test_stream_matches_the_python_clients_stream(client: ExampleClient, server: Server) -> None:
    """`facedet stream DIR --json` and `facedet-go|cpp stream DIR --json` print the same records."""
    python = run_cli("stream", str(IMAGES), "--server", server.target, "--json")
    example = client.run("stream", str(IMAGES), "--server", server.target, "--json")
    assert python.returncode == 0 and example.returncode == 0, (python.stderr, example.stderr)
    want, got = records(python.stdout), records(example.stdout)
    assert (
        [r["file"] for r in got] == [r["file"] for r in want] == sorted(str(p) for p in IMAGES.glob("*.jpg"))
    )
    for g, w in zip(got, want, strict=True):
        same(without_timing(g), without_timing(w), g["file"])


def test_stream_of_a_folder_without_images(client: ExampleClient, server: Server, tmp_path: Path) -> None:
    result = client.run("stream", str(tmp_path), "--server", server.target)
    assert result.returncode == 1 and "no .jpg, .jpeg or .png files" in result.stderr, result
    result = client.run("stream", str(tmp_path / "nowhere"), "--server", server.target)
    assert result.returncode == 1 and "no such folder" in result.stderr, result


def test_no_server_is_exit_3(client: ExampleClient) -> None:
    zidane = str(IMAGES / "zidane.jpg")
    started = time.monotonic()
    refused = client.run("detect", zidane, "--server", f"127.0.0.1:{free_port()}")
    assert refused.returncode == 3, refused
    assert "is not available" in refused.stderr and client.refused in refused.stderr
    assert time.monotonic() - started < 5  # refused is said at once, not after --connect-timeout
    with silent_listener() as target:
        started = time.monotonic()
        silent = client.run("detect", zidane, "--server", target, "--connect-timeout", "1")
        assert silent.returncode == 3, silent
        assert f"no FaceDetector answered at {target} within 1 s" in silent.stderr
        assert time.monotonic() - started < 10
        silent = client.run("stream", str(IMAGES), "--server", target, "--timeout", "1")
        assert silent.returncode == 3 and "within 1 s" in silent.stderr, silent
    missing_socket = client.run("stream", str(IMAGES), "--server", "unix:/tmp/facedet-none/x.sock")
    assert missing_socket.returncode == 3, missing_socket


@pytest.mark.parametrize(
    "args",
    [
        ["detect"],
        ["detect", "a.jpg", "--bogus"],
        ["detect", "a.jpg", "--timeout", "0"],
        ["detect", "a.jpg", "--timeout"],
        ["detect", "a.jpg", "--every", "2"],
        ["stream"],
        ["stream", "a", "b"],
        ["stream", "a", "--max-frames", "0"],
        ["classify", "a.jpg"],
        ["detect", "a.jpg", "--tls-cert", "c.pem"],
    ],
)
def test_bad_arguments_are_exit_2(client: ExampleClient, args: list[str]) -> None:
    result = client.run(*args)
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"usage: {client.name}"), result.stderr


def test_help_lists_the_flags_and_exit_statuses(client: ExampleClient) -> None:
    result = client.run("--help")
    assert result.returncode == 0
    for flag in (*SHARED_FLAGS, "--token-file", "--every", "--max-frames", "exit status:", "round_robin"):
        assert flag in result.stdout, flag


def test_the_python_client_names_the_flags_alike() -> None:
    """The example clients' flag names are the Python client's: `facedet detect --help` lists them."""
    python = run_cli("detect", "--help")
    for flag in (
        *SHARED_FLAGS,
        "--token-file",
        "--min-confidence",
        "--max-faces",
        "--ignore-exif-orientation",
    ):
        assert flag in python.stdout, flag


def test_tls_mutual_tls_and_token(client: ExampleClient, tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cert, key = pki.write_server()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca_pem)
    client_cert, client_key = pki.issue("pipeline")
    (tmp_path / "client.pem").write_bytes(client_cert)
    (tmp_path / "client.key").write_bytes(client_key)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    server = start_unix_checked(
        tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(ca),
        "--auth-token-file", str(token), name="tls",
    )  # fmt: skip
    zidane = str(IMAGES / "zidane.jpg")
    client_files = ["--tls-cert", str(tmp_path / "client.pem"), "--tls-key", str(tmp_path / "client.key")]
    mtls = ["--tls-ca", str(ca), *client_files]
    with_token = ["--token-file", str(token)]

    def detect(*flags: str, target: str = server.target) -> subprocess.CompletedProcess[str]:
        return client.run("detect", zidane, "--server", target, "--json", "--connect-timeout", "3", *flags)

    try:
        ok = detect(*mtls, *with_token)
        assert ok.returncode == 0, ok
        assert len(records(ok.stdout)[0]["faces"]) == 2
        by_name = detect(*mtls, *with_token, target=f"localhost:{server.port}")  # the certificate's DNS name
        assert by_name.returncode == 0, by_name
        streamed = client.run("stream", str(IMAGES), "--server", server.target, *mtls, *with_token)
        assert streamed.returncode == 0 and streamed.stdout.count("frame ") == len(PHOTOS), streamed

        no_token = detect(*mtls)
        assert no_token.returncode == 1, no_token
        assert records(no_token.stdout)[0]["error"]["code"] == "UNAUTHENTICATED"
        wrong = tmp_path / "wrong"
        wrong.write_text("guess")
        refused = detect(*mtls, "--token-file", str(wrong))
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr, refused

        no_client_cert = detect("--tls-ca", str(ca), *with_token)
        assert no_client_cert.returncode == 3, no_client_cert  # the server refuses the handshake
        system_cas = detect(*client_files, *with_token)
        assert system_cas.returncode == 3, system_cas  # the system's CAs do not know ours
        plaintext = detect(*with_token)
        assert plaintext.returncode == 3, plaintext  # a plaintext client on the TLS port

        # The unix socket stays plaintext; the token is still required there.
        assert detect(target=server.unix_target).returncode == 1
        plain = detect(*with_token, target=server.unix_target)
        assert plain.returncode == 0, plain
        unreadable = detect("--tls-ca", str(tmp_path / "no.pem"))
        assert unreadable.returncode == 1 and f"cannot read {tmp_path / 'no.pem'}" in unreadable.stderr
    finally:
        server.stop()


def _served(server: Server) -> int:
    return sum(r.get("ok", 0) for r in server.log_records() if r.get("event") == "summary")


@pytest.fixture
def second_server(start_server: ServerFactory) -> Server:
    return start_server("--summary-interval", "0.5", unix=True, name="second")


@pytest.mark.parametrize("scheme", ["ipv4", "unix"])
def test_round_robin_over_two_servers(
    client: ExampleClient, server: Server, second_server: Server, scheme: str
) -> None:
    """A target listing both servers spreads the calls over both (round_robin), from one channel."""
    if scheme == "ipv4":
        target = f"ipv4:{server.target},{second_server.target}"
    else:
        target = f"unix:{server.socket_path},{second_server.socket_path}"
    before = (_served(server), _served(second_server))
    images = [str(IMAGES / "zidane.jpg")] * 10
    result = client.run("detect", *images, "--server", target, "--json")
    assert result.returncode == 0, result
    assert all(len(r["faces"]) == 2 for r in records(result.stdout))

    def counts() -> tuple[int, int]:
        return _served(server) - before[0], _served(second_server) - before[1]

    wait_for(lambda: sum(counts()) == len(images), 15, "both servers' summaries of the 10 calls")
    assert min(counts()) >= 3, counts()  # round_robin, not all on the first address


def test_a_dead_address_in_the_list_fails_no_call(client: ExampleClient, server: Server) -> None:
    """round_robin skips an address nothing listens on: every call reaches the live server. A
    dns:/// name is balanced too (localhost: 127.0.0.1 serves, ::1 does not)."""
    images = [str(IMAGES / "bus.jpg")] * 6
    for target in (f"ipv4:127.0.0.1:{free_port()},{server.target}", f"dns:///localhost:{server.port}"):
        result = client.run("detect", *images, "--server", target, "--json")
        assert result.returncode == 0, (target, result)
        assert [len(r["faces"]) for r in records(result.stdout)] == [2] * len(images)


def test_a_server_killed_mid_run_fails_no_call(
    client: ExampleClient, start_server: ServerFactory, tmp_path: Path
) -> None:
    """Two servers, one SIGKILLed while detect runs through them: the retry policy (UNAVAILABLE)
    and wait_for_ready move its calls to the survivor, and every image is answered."""
    first = start_server("--log-level", "warning", unix=False, name="first")
    second = start_server("--log-level", "warning", unix=False, name="second")
    images = [str(IMAGES / "bus.jpg")] * 40
    target = f"ipv4:{first.target},{second.target}"
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr_file:
        proc = subprocess.Popen(
            [str(client.binary), "detect", *images, "--server", target, "--json"],
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            env=clean_env(),
        )
    # A thread reads stdout so that a client dying early fails the wait below instead of
    # blocking a readline forever.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) >= 5 or proc.poll() is not None, 60, "the first answers")
        first.signal(signal.SIGKILL)  # the run is under way on both servers
        proc.wait(timeout=180)
    finally:
        proc.kill()
        proc.wait(10)
    reader.join(10)
    stderr = stderr_path.read_text()
    assert proc.returncode == 0, stderr
    assert [len(r["faces"]) for r in records("".join(lines))] == [2] * len(images), stderr
