"""TLS server credentials whose certificate, key and client CA are re-read on demand (SIGHUP):
gRPC asks `fetch` at each new handshake, and a new configuration applies to connections made
after it; connections already open keep theirs."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsFileError(Exception):
    """A certificate or key file cannot be read; the message says which."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None  # None: no client certificate asked for

    def read(self) -> grpc.ServerCertificateConfiguration:
        key, cert = _read(self.key, "--tls-key"), _read(self.cert, "--tls-cert")
        ca = _read(self.client_ca, "--tls-client-ca") if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TlsFileError(f"{flag} {path} is not PEM")
    return data


class ReloadableTls:
    """The server credentials of `files`; `reload` reads them again for the next handshakes."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()  # fetch runs on gRPC's threads, reload on the event loop's
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            files.read(),
            self._fetch,  # type: ignore[arg-type]  # grpc's stub omits that None keeps the current one
            require_client_authentication=files.client_ca is not None,
        )

    def reload(self) -> None:
        """Read the files now (a broken file raises and the current ones stay)."""
        config = self.files.read()
        with self._lock:
            self._pending = config

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            config, self._pending = self._pending, None
        return config  # None: keep the current configuration
