"""TLS for the HTTP front end from the server's --tls-cert/--tls-key/--tls-client-ca. The
listening socket keeps one `ssl.SSLContext` for good; at each handshake its SNI callback (which
OpenSSL calls whether or not the client names a server) hands the connection the context built
from the files last read, so `reload` (SIGHUP) applies to the connections made after it, and a
broken file never touches the context in use."""

from __future__ import annotations

import ssl
from pathlib import Path


class HttpTlsError(Exception):
    """A certificate, key or CA file cannot be loaded; the message says which and why."""


class HttpTls:
    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._current = self._read()
        self.context = self._read()  # the listener's; each handshake switches to `_current`
        self.context.sni_callback = self._choose

    def _read(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
            if self.client_ca is not None:
                context.load_verify_locations(self.client_ca)
                context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as on the gRPC ports
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(str(p) for p in (self.cert, self.key, self.client_ca) if p is not None)
            raise HttpTlsError(f"cannot load the HTTP front end's TLS files ({files}): {exc}") from None
        return context

    def _choose(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self._current

    def reload(self) -> None:
        """Read the files again for the next handshakes; a broken one raises, the old stay."""
        self._current = self._read()
