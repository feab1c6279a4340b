"""Certificates made in the test (a CA, server and client certificates: `cryptography`), and a
server whose readiness is checked over its plaintext unix socket while its TCP port may be TLS.
Used by the TLS tests of the server, the HTTP front end and the Go and C++ clients."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from facedet_test_support import Server, health_status, wait_for

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


def start_checked_over_unix(
    tmp_path: Path, *args: str, tcp: bool = True, unix: bool = True, name: str = "server"
) -> Server:
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
