"""`facedet health ADDR` (the images' HEALTHCHECK) against a real server: exit 0 when SERVING, 1
for an answer that is not SERVING, 3 when nothing answers."""

from __future__ import annotations

from facedet_test_support import Server, free_port, run_cli


def test_serving_server_exits_0(server: Server) -> None:
    result = run_cli("health", server.target)
    assert (result.returncode, result.stdout.strip()) == (0, "SERVING"), result.stderr
    assert run_cli("health", server.unix_target).returncode == 0


def test_unknown_service_is_an_answer_not_serving(server: Server) -> None:
    result = run_cli("health", server.target, "--service", "no.such.Service")
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr


def test_nothing_listening_exits_3() -> None:
    result = run_cli("health", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.returncode == 3
    assert "UNAVAILABLE" in result.stderr or "DEADLINE_EXCEEDED" in result.stderr
