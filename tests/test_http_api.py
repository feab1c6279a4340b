"""The 2021 demo's HTTP API (`facedet serve --http-listen`): real servers, the real model and
photos, `curl` as the demo's users call it and urllib as a program would. The JSON must be the
gRPC answer for the same image in the demo's ratios (computed here from a gRPC call), and bad
input must get 400 / 413 / 503 with a JSON body saying what was wrong, while the server goes on."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from facedet.v1 import face_detector_pb2 as pb
from facedet_server.errors import Code, DeadlineExceeded, DetectError, Overloaded
from facedet_server.transport.http.demo_json import error_body, http_status, retry_after
from facedet_test_support import (
    EXPECTED_FACES,
    IMAGES,
    MODEL,
    REPO,
    Server,
    ServerFactory,
    arm_faults,
    faulty_server,
    free_port,
    image_bytes,
    shell_commands,
    wait_for,
    without_comment,
)
from pki_support import Pki
from pki_support import start_checked_over_unix as start_tls_server

Answer = tuple[int, Any]  # (HTTP status, the JSON body)
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")  # Debian's base has it


def http_server(factory: ServerFactory, *args: str, **kwargs: Any) -> tuple[Server, str]:
    """A server also serving HTTP on a free loopback port: (server, base URL)."""
    port = free_port()
    server = factory("--http-listen", f"127.0.0.1:{port}", *args, unix=False, **kwargs)
    return server, f"http://127.0.0.1:{port}"


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    """One urllib call; an HTTP error status is an answer too (its JSON body parsed)."""
    status, body_json, _ = request_with_headers(method, url, body, headers)
    return status, body_json


def request_with_headers(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, Message]:
    """`request`, and the answer's headers."""
    call = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(call, timeout=60) as answer:
            return answer.status, json.loads(answer.read()), answer.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def curl(*args: str, stdin: bytes = b"") -> Answer:
    """curl with `args` (`stdin` for `-T -`); the status comes from -w, the body is JSON."""
    assert CURL is not None
    done = subprocess.run(
        [CURL, "-sS", "-w", "\n%{http_code}", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    body, _, status = done.stdout.decode().rpartition("\n")
    return int(status), json.loads(body)


def demo_faces(response: pb.DetectFacesResponse) -> list[dict[str, Any]]:
    """A gRPC answer as the demo writes it: box centre and size, landmarks, as image ratios."""
    width, height = response.image_width, response.image_height
    faces = []
    for face in response.faces:
        box, lm = face.box, face.landmarks
        points = (lm.left_eye, lm.right_eye, lm.nose, lm.mouth_left, lm.mouth_right)
        faces.append(
            {
                "xywh_ratio": [
                    (box.x_min + box.x_max) / 2 / width,
                    (box.y_min + box.y_max) / 2 / height,
                    (box.x_max - box.x_min) / width,
                    (box.y_max - box.y_min) / height,
                ],
                "conf": face.confidence,
                "landmarks_ratio": [v for p in points for v in (p.x / width, p.y / height)],
            }
        )
    return faces


def assert_same_faces(got: Any, expected: list[dict[str, Any]]) -> None:
    assert isinstance(got, list) and len(got) == len(expected), (got, expected)
    for face, want in zip(got, expected, strict=True):
        assert set(face) == {"xywh_ratio", "conf", "landmarks_ratio"}, face
        assert len(face["xywh_ratio"]) == 4 and len(face["landmarks_ratio"]) == 10, face
        # Batches of other sizes may move the last float32 bits; 1e-4 of the image is < 0.2 px.
        assert face["xywh_ratio"] == pytest.approx(want["xywh_ratio"], abs=1e-4)
        assert face["conf"] == pytest.approx(want["conf"], abs=1e-4)
        assert face["landmarks_ratio"] == pytest.approx(want["landmarks_ratio"], abs=1e-4)


def grpc_faces(server: Server, name: str) -> list[dict[str, Any]]:
    with server.stub() as stub:
        return demo_faces(stub.DetectFaces(pb.DetectFacesRequest(encoded=image_bytes(name)), timeout=60))


def assert_still_serves(url: str) -> None:
    status, faces = request("PUT", f"{url}/predictions/fd1", image_bytes("zidane.jpg"))
    assert status == 200 and len(faces) == EXPECTED_FACES["zidane.jpg"], (status, faces)


@pytest.fixture(scope="module")
def served(module_server_factory: ServerFactory) -> tuple[Server, str]:
    return http_server(module_server_factory)


# --- the demo's calls ---------------------------------------------------------------------------


@needs_curl
@pytest.mark.parametrize("name", sorted(EXPECTED_FACES))
def test_curl_put_answers_the_grpc_faces_as_demo_ratios(served: tuple[Server, str], name: str) -> None:
    server, url = served
    status, faces = curl(f"{url}/predictions/fd1", "-T", str(IMAGES / name))  # the demo README's call
    assert status == 200, faces
    assert len(faces) == EXPECTED_FACES[name]
    assert_same_faces(faces, grpc_faces(server, name))
    for face in faces:  # ratios: the whole face inside the picture
        cx, cy, w, h = face["xywh_ratio"]
        assert 0 < w < 1 and 0 < h < 1 and cx - w / 2 >= 0 and cx + w / 2 <= 1.001, face
        assert cy - h / 2 >= -0.001 and cy + h / 2 <= 1.001, face
        assert 0.5 <= face["conf"] <= 1


@needs_curl
def test_curl_post_data_binary_with_any_model_name(served: tuple[Server, str]) -> None:
    server, url = served
    expected = grpc_faces(server, "sample.jpg")
    for path in ("/predictions/fd1", "/predictions/any-model-name", "/predictions/fd1/2.0"):
        status, faces = curl("-X", "POST", f"{url}{path}", "--data-binary", f"@{IMAGES / 'sample.jpg'}")
        assert status == 200, (path, faces)
        assert_same_faces(faces, expected)


def test_an_http_client_gets_the_same_json_by_put_and_post(served: tuple[Server, str]) -> None:
    server, url = served
    expected = grpc_faces(server, "bus.jpg")
    for method in ("PUT", "POST"):
        status, faces = request(method, f"{url}/predictions/fd1", image_bytes("bus.jpg"))
        assert status == 200, faces
        assert_same_faces(faces, expected)


@needs_curl
def test_the_readme_migration_note_runs_as_written(served: tuple[Server, str]) -> None:
    """The README's "From the 2021 demo" commands, on this test's port and photo."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("\n## From the 2021 demo\n")
    commands = [without_comment(c) for c in shell_commands(readme[start : readme.index("\n## ", start + 1)])]
    assert commands == [
        "facedet serve --http-listen 127.0.0.1:8080",
        "curl 127.0.0.1:8080/predictions/fd1 -T image.jpg",
        "curl 127.0.0.1:8080/ping",
    ], commands
    server, url = served  # stands for the first command, on a free port
    here = url.removeprefix("http://")
    for command in commands[1:]:
        argv = command.replace("127.0.0.1:8080", here).replace("image.jpg", str(IMAGES / "zidane.jpg"))
        status, answer = curl(*argv.split()[1:])
        assert status == 200, (command, answer)
        if "/ping" in command:
            assert answer == {"status": "Healthy"}
        else:
            assert_same_faces(answer, grpc_faces(server, "zidane.jpg"))


def test_ping_answers_healthy(served: tuple[Server, str]) -> None:
    assert request("GET", f"{served[1]}/ping") == (200, {"status": "Healthy"})


# --- bad input ----------------------------------------------------------------------------------


def test_bad_bodies_get_400_saying_what_was_wrong(served: tuple[Server, str]) -> None:
    _, url = served
    photo = image_bytes("zidane.jpg")
    cases = {
        b"this is not an image": "not a jpeg or png",
        b"": "body is empty",
        photo[: len(photo) // 3]: "truncated",
    }
    for body, says in cases.items():
        status, error = request("PUT", f"{url}/predictions/fd1", body)
        assert status == 400, (body[:20], error)
        assert error["code"] == 400 and error["type"] and says in error["message"].lower(), error
    form = b"--x\r\nContent-Disposition: form-data; name=data\r\n\r\nabc\r\n--x--\r\n"
    status, error = request(
        "POST", f"{url}/predictions/fd1", form, {"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert status == 400 and "curl -t" in error["message"].lower(), error
    assert_still_serves(url)


@needs_curl
def test_a_body_over_the_message_limit_gets_413_and_the_server_goes_on(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    limit = 200_000
    server, url = http_server(start_server, "--max-message-bytes", str(limit))
    big = tmp_path / "big.bin"
    big.write_bytes(b"\xff" * (limit + 1))
    huge = tmp_path / "huge.bin"  # over 1 MiB: curl asks `Expect: 100-continue` first
    huge.write_bytes(b"\xff" * (3 * 1024 * 1024))
    answers = {
        "Content-Length": request("PUT", f"{url}/predictions/fd1", big.read_bytes()),
        "Expect: 100-continue": curl(f"{url}/predictions/fd1", "-T", str(huge)),
        # From stdin curl sends it chunked: no length up front, refused while being read.
        "chunked": curl(f"{url}/predictions/fd1", "-T", "-", stdin=huge.read_bytes()),
    }
    for how, (status, error) in answers.items():
        assert status == 413, (how, error)
        assert error["code"] == 413 and f"--max-message-bytes {limit}" in error["message"], (how, error)
    assert_still_serves(url)
    logged = [
        r for r in server.log_records() if r.get("event") == "request_failed" and r.get("status") == 413
    ]
    assert len(logged) == len(answers), logged


@pytest.mark.timeout(120)
def test_a_full_queue_gets_503_and_the_others_are_answered(start_server: ServerFactory) -> None:
    _, url = http_server(start_server, "--max-queue", "1", "--max-batch", "1")
    data = image_bytes("test.jpg")
    with ThreadPoolExecutor(40) as pool:
        answers = list(
            pool.map(lambda _: request_with_headers("PUT", f"{url}/predictions/fd1", data), range(40))
        )
    refused = [(error, headers) for status, error, headers in answers if status == 503]
    ok = [faces for status, faces, _ in answers if status == 200]
    assert len(refused) + len(ok) == len(answers), [a[:2] for a in answers if a[0] not in (200, 503)]
    assert refused, "40 concurrent requests with --max-queue 1 were all accepted"
    assert ok, "every request was refused"
    for error, headers in refused:
        assert error["code"] == 503 and "queue" in error["message"].lower(), error
        # A full queue always carries the batcher's retry hint: whole seconds, at least 1.
        wait = headers.get("Retry-After")
        assert wait is not None and wait.isdigit() and 1 <= int(wait) <= 30, (wait, error)
    assert len({len(faces) for faces in ok}) == 1
    assert_still_serves(url)


@pytest.mark.timeout(120)
def test_a_request_timeout_passed_is_504_and_the_server_goes_on(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """X-Request-Timeout (and Envoy's header) give an HTTP request a deadline: against a server
    whose every model run takes 1.5 s longer (the test-only fault switch), a request that waits
    0.5 s gets 504 at its timeout, not the answer 1.5 s later, and one that waits 30 s is answered."""
    control = tmp_path / "faults"
    server, url = http_server(start_server, env={"FACEDET_FAULT_INJECTION": str(control)})
    arm_faults(control, "1000 slow 1500")
    data = image_bytes("zidane.jpg")
    for headers in ({"X-Request-Timeout": "0.5"}, {"x-envoy-expected-rq-timeout-ms": "500"}):
        started = time.monotonic()
        status, error = request("PUT", f"{url}/predictions/fd1", data, headers)
        waited = time.monotonic() - started
        assert status == 504 and error["code"] == 504, (headers, status, error)
        assert error["type"] == "DeadlineExceeded" and "0.5 s" in error["message"], error
        assert 0.45 < waited < 1.4, (headers, waited)
    status, faces = request("PUT", f"{url}/predictions/fd1", data, {"X-Request-Timeout": "30"})
    assert status == 200 and len(faces) == EXPECTED_FACES["zidane.jpg"], (status, faces)
    timed_out = [
        r for r in server.log_records() if r.get("event") == "request_failed" and r.get("status") == 504
    ]
    assert len(timed_out) == 2, timed_out


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Request-Timeout": "soon"},
        {"X-Request-Timeout": "0"},
        {"X-Request-Timeout": "-1"},
        {"X-Request-Timeout": "nan"},
        {"x-envoy-expected-rq-timeout-ms": "inf"},
        {"x-envoy-expected-rq-timeout-ms": "5s"},
    ],
)
def test_a_malformed_request_timeout_is_400_naming_the_header(
    served: tuple[Server, str], headers: dict[str, str]
) -> None:
    _, url = served
    status, error = request("PUT", f"{url}/predictions/fd1", image_bytes("zidane.jpg"), headers)
    ((name, value),) = headers.items()
    assert status == 400 and f"header {name}: {value!r}" in error["message"], (status, error)


@pytest.mark.parametrize("code", list(Code))
def test_every_service_error_has_an_http_status_and_a_json_body(code: Code) -> None:
    """A code missing from the table would turn its error into aiohttp's bare 500 (a KeyError in
    the error path); each code a server can reach is also checked on a server above."""
    error = DetectError("why")
    error.code = code
    status = http_status(error)
    assert 400 <= status < 600
    assert json.loads(error_body(error)) == {"code": int(status), "type": "DetectError", "message": "why"}


def test_deadline_is_504_and_retry_after_is_whole_seconds_rounded_up() -> None:
    assert http_status(DeadlineExceeded("late")) == 504
    assert json.loads(error_body(DeadlineExceeded("late")))["code"] == 504
    assert http_status(Overloaded("full")) == 503
    hints = {None: None, 10: "1", 999: "1", 1000: "1", 1001: "2", 30000: "30"}
    assert {ms: retry_after(Overloaded("full", ms)) for ms in hints} == hints
    assert retry_after(DeadlineExceeded("late")) is None


# --- lifecycle ----------------------------------------------------------------------------------


def test_ping_is_unhealthy_and_predictions_503_while_the_model_loads(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """As in test_lifecycle: the registry name makes the first start convert the model into a
    fresh cache, so the ports are open well before the model is ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(
        "--http-listen",
        f"127.0.0.1:{port}",
        start=False,
        unix=False,
        model="yolov5n-0.5",
        env={"FACEDET_MODEL_DIR": str(MODEL.parent), "FACEDET_HOME": str(tmp_path / "home")},
    )
    server.start(wait=False)
    pings: list[Answer] = []
    early: list[Answer] = []

    def healthy() -> bool:
        server.check_alive()
        try:
            pings.append(request("GET", f"{url}/ping"))
        except urllib.error.URLError:
            return False  # not listening yet
        if pings[-1][0] == 500 and not early:
            early.append(request("PUT", f"{url}/predictions/fd1", image_bytes("zidane.jpg")))
        return pings[-1][0] == 200

    wait_for(healthy, 120, "/ping to answer Healthy", interval=0.05)
    assert pings[0] == (500, {"status": "Unhealthy"}), pings[:3]
    assert pings[-1] == (200, {"status": "Healthy"})
    assert {p for p, _ in pings[:-1]} == {500}, pings
    status, error = early[0]
    assert status in (503, 200), early  # 200 if the model came up in between
    if status == 503:
        assert error["code"] == 503 and "loading" in error["message"], error
    assert_still_serves(url)


@pytest.mark.timeout(120)
def test_sigterm_drains_http_requests_in_flight(start_server: ServerFactory, tmp_path: Path) -> None:
    port = free_port()
    server, control = faulty_server(
        start_server, tmp_path, "--http-listen", f"127.0.0.1:{port}", "--grace-seconds", "30"
    )
    url = f"http://127.0.0.1:{port}"
    data = image_bytes("test.jpg")
    expected = request("PUT", f"{url}/predictions/fd1", data)
    assert expected[0] == 200 and expected[1]
    # Each run 300 ms longer: the 12 requests take about 4 s on any machine, so some are in
    # flight at the signal (a fast machine answered all 12 in the first 0.5 s).
    arm_faults(control, "1000 slow 300")
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(request, "PUT", f"{url}/predictions/fd1", data) for _ in range(12)]
        time.sleep(0.5)  # let them reach the server
        in_flight = sum(not f.done() for f in futures)
        server.signal()
        answers = [f.result() for f in futures]
    assert in_flight > 0, "every request finished before SIGTERM; the test proved nothing"
    for status, faces in answers:
        assert status == 200 and len(faces) == len(expected[1]), (status, faces)
    assert server.wait_exit(30) == 0, server.log_text()
    with pytest.raises(urllib.error.URLError):  # nothing listens any more
        request("GET", f"{url}/ping")
    events = [r.get("event") for r in server.log_records()]
    assert "draining" in events and events[-1] == "stopped", events


# --- security -----------------------------------------------------------------------------------


def test_the_bearer_token_guards_predictions_but_not_ping(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    _, url = http_server(start_server, "--auth-token-file", str(token))
    body = image_bytes("zidane.jpg")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, error = request("PUT", f"{url}/predictions/fd1", body, headers)
        assert status == 401 and "Bearer" in error["message"], error
    status, faces = request("PUT", f"{url}/predictions/fd1", body, {"Authorization": "Bearer s3cret"})
    assert status == 200 and len(faces) == EXPECTED_FACES["zidane.jpg"]
    assert request("GET", f"{url}/ping") == (200, {"status": "Healthy"})


@needs_curl
def test_tls_settings_apply_to_the_http_port_and_reload_on_sighup(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cert, key = pki.write_server()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca_pem)
    port = free_port()
    server = start_tls_server(
        tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), "--http-listen", f"127.0.0.1:{port}"
    )
    try:
        url = f"https://localhost:{port}"
        status, faces = curl("--cacert", str(ca), f"{url}/predictions/fd1", "-T", str(IMAGES / "zidane.jpg"))
        assert status == 200 and len(faces) == EXPECTED_FACES["zidane.jpg"]
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plaintext there
            request("GET", f"http://127.0.0.1:{port}/ping")
        # A new certificate from another CA: new connections get it after SIGHUP.
        (tmp_path / "newer").mkdir()
        newer = Pki(tmp_path / "newer", "newer-ca")
        new_cert, new_key = newer.issue("localhost")
        cert.write_bytes(new_cert)
        key.write_bytes(new_key)
        new_ca = tmp_path / "new-ca.pem"
        new_ca.write_bytes(newer.ca_pem)
        server.signal(signal.SIGHUP)
        wait_for(lambda: _curl_ok(str(new_ca), f"{url}/ping"), 10, "the new certificate after SIGHUP")
        assert not _curl_ok(str(ca), f"{url}/ping")
    finally:
        server.stop()


@needs_curl
def test_mutual_tls_on_the_http_port_needs_a_client_certificate_the_ca_signed(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cert, key = pki.write_server()
    client_ca = tmp_path / "client-ca.pem"
    client_ca.write_bytes(pki.ca_pem)
    port = free_port()
    server = start_tls_server(
        tmp_path,
        *("--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(client_ca)),
        *("--http-listen", f"127.0.0.1:{port}"),
    )
    try:
        url = f"https://localhost:{port}/predictions/fd1"
        signed = [tmp_path / "client.pem", tmp_path / "client.key"]
        for path, data in zip(signed, pki.issue("pipeline"), strict=True):
            path.write_bytes(data)
        (tmp_path / "other").mkdir()
        stranger = [tmp_path / "other" / "client.pem", tmp_path / "other" / "client.key"]
        for path, data in zip(stranger, Pki(tmp_path / "other", "other-ca").issue("stranger"), strict=True):
            path.write_bytes(data)
        photo = ("-T", str(IMAGES / "zidane.jpg"))
        status, faces = curl(
            "--cacert", str(client_ca), "--cert", str(signed[0]), "--key", str(signed[1]), url, *photo
        )
        assert status == 200 and len(faces) == EXPECTED_FACES["zidane.jpg"]
        assert CURL is not None
        for extra in ([], ["--cert", str(stranger[0]), "--key", str(stranger[1])]):
            done = subprocess.run(
                [CURL, "-sS", "--cacert", str(client_ca), *extra, url, *photo],
                capture_output=True,
                check=False,
                timeout=30,
            )
            assert done.returncode != 0, (extra, done.stdout)  # the handshake is refused
    finally:
        server.stop()


def _curl_ok(ca: str, url: str) -> bool:
    assert CURL is not None
    done = subprocess.run([CURL, "-sS", "--cacert", ca, url], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


# --- metrics and the benchmark --------------------------------------------------------------------


def test_http_predictions_are_counted_in_the_metrics_by_status(start_server: ServerFactory) -> None:
    metrics_port = free_port()
    _, url = http_server(start_server, "--metrics-listen", f"127.0.0.1:{metrics_port}")
    assert request("PUT", f"{url}/predictions/fd1", image_bytes("zidane.jpg"))[0] == 200
    assert request("PUT", f"{url}/predictions/fd1", b"not an image")[0] == 400
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for code in ("OK", "INVALID_ARGUMENT"):
        line = f'facedet_requests_total{{code="{code}",method="HTTP /predictions"}} 1.0'
        assert line in text, [row for row in text.splitlines() if row.startswith("facedet_requests_total")]


def test_the_http_benchmark_command_runs(served: tuple[Server, str]) -> None:
    """`python -m facedet_bench.http_load`, both modes, cut short: a smoke test of the command
    docs/benchmarks.md quotes, not a measurement."""
    server, url = served
    short = ["--concurrency", "2", "--duration", "1", "--warmup", "0.3", "--processes", "1", "--json"]
    runs = {
        "against one server": [
            "--grpc",
            server.target,
            "--http",
            url.removeprefix("http://"),
            "--image",
            str(IMAGES / "zidane.jpg"),
        ],
        "frameworks": ["--frameworks", "--image", str(IMAGES / "zidane.jpg")],
    }
    for what, args in runs.items():
        done = subprocess.run(
            [sys.executable, "-m", "facedet_bench.http_load", *args, *short],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, (what, done.stderr)
        results = json.loads(done.stdout)["results"]
        modes = ["http", "grpc"] if what == "against one server" else ["aiohttp", "starlette"]
        assert [r["mode"] for r in results] == modes, results
        for result in results:
            assert result["requests"] > 0 and result["errors"] == 0, result
