"""Bearer-token authentication of gRPC calls: a server interceptor that lets a call through only
with `authorization: Bearer <token>` metadata matching the token file. Health checks stay open,
so orchestrators probe without a secret."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

OPEN_SERVICES = ("/grpc.health.v1.Health/",)  # method prefixes that need no token


class TokenFileError(Exception):
    """The token file cannot be read or holds no token; the message says which file and why."""


def read_token(path: Path) -> bytes:
    """The one token `path` holds, without surrounding whitespace (an editor's trailing newline)."""
    try:
        token = path.read_bytes().strip()
    except OSError as exc:
        raise TokenFileError(f"cannot read --auth-token-file {path}: {exc.strerror or exc}") from None
    if not token or b"\n" in token:
        raise TokenFileError(f"--auth-token-file {path} must hold exactly one token on one line")
    return token


class TokenFile:
    """The token of `path`, read at start and again on `reload` (SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = read_token(path)

    def reload(self) -> None:
        """Re-read the file; a file that became unreadable keeps the old token (and raises)."""
        self.token = read_token(self.path)

    def accepts(self, metadata: Any) -> bool:
        presented = bearer_token(metadata)
        return presented is not None and hmac.compare_digest(presented, self.token)


def bearer_token(metadata: Any) -> bytes | None:
    """The token of the first `authorization: Bearer ...` entry of a call's metadata."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode() if isinstance(value, bytes) else value
        scheme, _, token = text.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip().encode()
        return None
    return None


def _refusal(handler: grpc.RpcMethodHandler[Any, Any], message: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of `handler`'s kind that ends the call with UNAUTHENTICATED."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, tokens: TokenFile) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        metadata = handler_call_details.invocation_metadata
        if self._tokens.accepts(metadata):
            return handler
        why = "no" if bearer_token(metadata) is None else "a wrong"
        return _refusal(
            handler, f"{method} needs `authorization: Bearer <token>` metadata; this call sent {why} token"
        )
