"""The security settings made into what the gRPC server uses: TLS credentials, the token
interceptor, socket permissions, and their reload on SIGHUP."""

from __future__ import annotations

import grp
import ipaddress
import os
from pathlib import Path
from typing import Any

import grpc
import structlog

from facedet_server.app.config import ServerConfig, socket_mode
from facedet_server.transport.grpc.auth import BearerTokenInterceptor, TokenFile, TokenFileError
from facedet_server.transport.grpc.tls import ReloadableTls, TlsFileError, TlsFiles

log = structlog.get_logger("facedet.security")


class SecurityError(Exception):
    """A security setting cannot be applied (unreadable file, unknown group)."""


class ServerSecurity:
    """What `config` asks for; built before the server so a bad file fails the start at once."""

    def __init__(self, config: ServerConfig) -> None:
        try:
            self.tokens = TokenFile(Path(config.auth_token_file)) if config.auth_token_file else None
            self.tls = (
                ReloadableTls(
                    TlsFiles(
                        Path(config.tls_cert),
                        Path(config.tls_key),
                        Path(config.tls_client_ca) if config.tls_client_ca else None,
                    )
                )
                if config.tls_cert
                else None
            )
        except (TokenFileError, TlsFileError) as exc:
            raise SecurityError(str(exc)) from None
        self.socket_mode = socket_mode(config.unix_socket_mode)
        self.socket_gid = _group_id(config.unix_socket_group) if config.unix_socket_group else None

    def interceptors(self) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        return [BearerTokenInterceptor(self.tokens)] if self.tokens else []

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Bind `address`: TLS on TCP when configured; a unix socket gets its mode and group."""
        if address.startswith("unix:"):
            port = server.add_insecure_port(address)
            self._set_permissions(unix_path(address))
            return port
        if self.tls is not None:
            return server.add_secure_port(address, self.tls.credentials)
        if not is_loopback(address):
            log.warning("plaintext_listen", address=address, hint="set --tls-cert/--tls-key")
        return server.add_insecure_port(address)

    def _set_permissions(self, path: str) -> None:
        try:
            if self.socket_gid is not None:
                os.chown(path, -1, self.socket_gid)
            os.chmod(path, self.socket_mode)
        except OSError as exc:
            raise SecurityError(f"cannot set mode/group of unix socket {path}: {exc}") from None

    def reload(self) -> None:
        """SIGHUP: re-read the token and certificate files; a broken one is logged and the
        current one stays in force."""
        for name, part in (("auth_token_file", self.tokens), ("tls", self.tls)):
            if part is None:
                continue
            try:
                part.reload()
            except (TokenFileError, TlsFileError) as exc:
                log.error("reload_failed", what=name, error=str(exc))
            else:
                log.info("reloaded", what=name)


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SecurityError(f"--unix-socket-group {group!r}: no such group") from None


def unix_path(address: str) -> str:
    """The file of unix:path, unix:/abs and unix:///abs addresses."""
    rest = address[len("unix:") :]
    return rest[2:] if rest.startswith("//") else rest


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT only accepts connections from this machine."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
