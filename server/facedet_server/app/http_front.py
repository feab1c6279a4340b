"""The HTTP front end (`--http-listen`) as the server's settings ask for it: its address, body
limit and grace, TLS from --tls-cert/--tls-key/--tls-client-ca, the bearer token of
--auth-token-file, and /ping following the gRPC health status."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from facedet_server.app.config import ServerConfig
from facedet_server.app.security import ServerSecurity, is_loopback
from facedet_server.transport.http.server import CallMetrics, HttpFrontEnd
from facedet_server.transport.http.tls import HttpTls, HttpTlsError

log = structlog.get_logger("facedet.http")


class HttpSetupError(Exception):
    """The HTTP front end cannot be set up (a TLS file); the message says why."""


def http_front_end(
    config: ServerConfig,
    security: ServerSecurity,
    serving: Callable[[], bool],
    metrics: CallMetrics | None = None,
) -> HttpFrontEnd | None:
    """None without --http-listen. Plaintext off loopback is logged, as for gRPC's ports."""
    if not config.http_listen:
        return None
    tls = None
    if config.tls_cert:
        try:
            ca = Path(config.tls_client_ca) if config.tls_client_ca else None
            tls = HttpTls(Path(config.tls_cert), Path(config.tls_key), ca)
        except HttpTlsError as exc:
            raise HttpSetupError(str(exc)) from None
    if tls is None and not is_loopback(config.http_listen):
        log.warning(
            "plaintext_listen", address=config.http_listen, api="http", hint="set --tls-cert/--tls-key"
        )
    tokens = security.tokens
    authorize = None
    if tokens is not None:

        def authorize(header: str | None) -> bool:
            return header is not None and tokens.accepts([("authorization", header)])

    front = HttpFrontEnd(
        [config.http_listen],
        config.max_message_bytes,
        grace_seconds=config.grace_seconds,
        reuse_port=config.reuse_port,
        tls=tls,
        authorize=authorize,
        serving=serving,
        metrics=metrics,
    )
    return front
