"""TLS, mutual TLS, certificate reload on SIGHUP, bearer tokens, reflection off, unix socket
permissions and the plaintext warning, against real `facedet serve` processes."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import grpc
import pytest
from facedet.client import FaceDetectorClient, FaceDetectorError
from facedet_test_support import Server, health_status, image_bytes, wait_for
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pki_support import Pki
from pki_support import start_checked_over_unix as start


def detect(target: str, **kwargs: object) -> int:
    kwargs.setdefault("connect_timeout", 5)
    with FaceDetectorClient(target, timeout=30, **kwargs) as client:  # type: ignore[arg-type]
        return len(client.detect(image_bytes("zidane.jpg")).faces)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def test_tls_with_and_without_the_ca(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.write_server()
    server = start(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert detect(server.target, root_certificates=pki.ca_pem) > 0
        with pytest.raises(FaceDetectorError) as failed:  # the system's CAs do not know ours
            detect(server.target, connect_timeout=2)
        assert failed.value.code == "UNAVAILABLE"
        assert detect(server.unix_target) > 0  # the unix socket stays plaintext
    finally:
        server.stop()


def test_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.write_server()
    ca = tmp_path / "clients-ca.pem"
    ca.write_bytes(pki.ca_pem)
    server = start(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(ca))
    try:
        client_cert, client_key = pki.issue("pipeline")
        assert (
            detect(
                server.target,
                root_certificates=pki.ca_pem,
                certificate_chain=client_cert,
                private_key=client_key,
            )
            > 0
        )
        with pytest.raises(FaceDetectorError):
            detect(server.target, root_certificates=pki.ca_pem, connect_timeout=2)
        stranger_cert, stranger_key = Pki(tmp_path, "other-ca").issue("stranger")
        with pytest.raises(FaceDetectorError):
            detect(
                server.target,
                root_certificates=pki.ca_pem,
                certificate_chain=stranger_cert,
                private_key=stranger_key,
                connect_timeout=2,
            )
    finally:
        server.stop()


def test_certificate_swap_on_sighup(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.write_server()
    server = start(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert detect(server.target, root_certificates=pki.ca_pem) > 0
        newer = Pki(tmp_path, "rotated-ca")
        new_cert, new_key = newer.issue("localhost")
        cert.write_bytes(new_cert)
        key.write_bytes(new_key)
        server.signal(signal.SIGHUP)
        wait_for(lambda: '"reloaded"' in server.log_text(), 10, "reloaded in the log")
        assert detect(server.target, root_certificates=newer.ca_pem) > 0
        with pytest.raises(FaceDetectorError):  # new connections present the new certificate
            detect(server.target, root_certificates=pki.ca_pem, connect_timeout=2)
        server.check_alive()
    finally:
        server.stop()


def test_bearer_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    server = start(tmp_path, "--auth-token-file", str(token_file))
    try:
        for token in (None, "wrong"):
            with pytest.raises(FaceDetectorError) as refused:
                detect(server.target, token=token)
            assert refused.value.code == "UNAUTHENTICATED"
            assert "authorization: Bearer" in str(refused.value)
        assert detect(server.target, token="s3cret-token") > 0
        assert health_status(server.target) == 1  # health needs no token
        token_file.write_text("rotated\n")
        server.signal(signal.SIGHUP)
        wait_for(lambda: '"reloaded"' in server.log_text(), 10, "reloaded in the log")
        assert detect(server.target, token="rotated") > 0
        with pytest.raises(FaceDetectorError):
            detect(server.target, token="s3cret-token")
    finally:
        server.stop()


def _reflection_list(target: str) -> list[str]:
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
        return [s.name for s in reply.list_services_response.service]


def test_no_reflection_and_socket_permissions(tmp_path: Path) -> None:
    gid = os.getgroups()[-1] if os.getgroups() else os.getgid()
    server = start(tmp_path, "--no-reflection", "--unix-socket-mode", "0660", "--unix-socket-group", str(gid))
    try:
        with pytest.raises(grpc.RpcError) as missing:
            _reflection_list(server.target)
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert server.socket_path is not None
        info = os.stat(server.socket_path)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == gid
    finally:
        server.stop()


def test_plaintext_warning_only_off_loopback(tmp_path: Path) -> None:
    local = start(tmp_path, name="local")
    try:
        assert "facedet.v1.FaceDetector" in _reflection_list(local.target)  # reflection on by default
        assert stat.S_IMODE(os.stat(str(local.socket_path)).st_mode) == 0o660
        assert "plaintext_listen" not in local.log_text()
    finally:
        local.stop()
    port = Server(tmp_path, tcp=True).port
    open_server = start(tmp_path, "--listen", f"0.0.0.0:{port}", tcp=False, name="open")
    try:
        records = [r for r in open_server.log_records() if r.get("event") == "plaintext_listen"]
        assert [r["address"] for r in records] == [f"0.0.0.0:{port}"]
    finally:
        open_server.stop()
