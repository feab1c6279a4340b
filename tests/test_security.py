"""TLS, mutual TLS, certificate reload on SIGHUP, bearer tokens, reflection off, unix socket
permissions and the plaintext warning, against real `facedet serve` processes."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from facedet.client import FaceDetectorClient, FaceDetectorError
from facedet_test_support import Server, health_status, image_bytes, wait_for
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

Pem = tuple[bytes, bytes]  # (certificate, key)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_cert(
    common: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(issuer[0].subject if issuer else _name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName(common),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


class Pki:
    def __init__(self, folder: Path, ca_name: str = "test-ca") -> None:
        self.ca = make_cert(ca_name)
        self.ca_pem = pem(*self.ca)[0]
        self.folder = folder

    def issue(self, common: str) -> Pem:
        return pem(*make_cert(common, self.ca))

    def write_server(self, cert_name: str = "server.pem", key_name: str = "server.key") -> tuple[Path, Path]:
        cert, key = self.issue("localhost")
        (self.folder / cert_name).write_bytes(cert)
        (self.folder / key_name).write_bytes(key)
        return self.folder / cert_name, self.folder / key_name


def start(tmp_path: Path, *args: str, tcp: bool = True, unix: bool = True, name: str = "server") -> Server:
    """A server whose readiness is checked over its plaintext unix socket (TCP may be TLS)."""
    server = Server(tmp_path, *args, tcp=tcp, unix=unix, name=name)
    server.start(wait=False)
    wait_for(lambda: _serving(server), 120, "server SERVING on its unix socket")
    return server


def _serving(server: Server) -> bool:
    server.check_alive()
    try:
        return health_status(server.unix_target, timeout=1.0) == 1
    except grpc.RpcError:
        return False


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
