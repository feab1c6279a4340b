"""Channel settings, method paths and the health check, shared by the blocking and async clients."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

# Client-side limits only: a larger image is then refused by the server with a clear
# RESOURCE_EXHAUSTED rather than by this side's 4 MiB gRPC default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

SERVICE = "facedet.v1.FaceDetector"
DETECT_METHOD = f"/{SERVICE}/DetectFaces"
STREAM_METHOD = f"/{SERVICE}/StreamDetectFaces"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"

ChannelOptions = Sequence[tuple[str, Any]]

DEFAULT_PORT = 50051
# gRPC schemes whose addresses are not host[:port] (or are lists): passed on as they are.
_SCHEMES_AS_GIVEN = ("unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:", "xds:", "google-c2p:")


def with_default_port(target: str) -> str:
    """`target` with port 50051 where it names a host without a port: "localhost" ->
    "localhost:50051", "[::1]" -> "[::1]:50051", "dns:///svc" -> "dns:///svc:50051" (gRPC
    itself would dial 443, the HTTPS port). unix:, ipv4:, ipv6: and other schemes, and anything
    with a port, are left as they are."""
    if target.startswith("dns:"):
        rest = target[len("dns:") :]
        if rest.startswith("//"):  # dns://[authority]/host
            slash = rest.find("/", 2)
            if slash < 0:
                return target  # not a dns: URI gRPC takes; its error says so
            return "dns:" + rest[: slash + 1] + _host_with_port(rest[slash + 1 :])
        return "dns:" + _host_with_port(rest)
    if target.startswith(_SCHEMES_AS_GIVEN) or "://" in target:
        return target
    return _host_with_port(target)


def _host_with_port(host: str) -> str:
    if not host:
        return host
    if host.startswith("["):  # [IPv6] or [IPv6]:port
        return f"{host}:{DEFAULT_PORT}" if host.endswith("]") else host
    colons = host.count(":")
    if colons == 0:
        return f"{host}:{DEFAULT_PORT}"
    if colons > 1:  # a bare IPv6 address: gRPC cannot read a port from it either
        return f"[{host}]:{DEFAULT_PORT}"
    return host


# For a target of several servers (replicas, or the front ends of one server): round_robin
# sends each call or stream to the next ready address (gRPC's default, pick_first, would send
# everything to the first); a call waits for some address to be ready rather than failing on
# the one that just died, and one that failed with UNAVAILABLE before any response (the replica
# was killed or is draining) is retried on the next address, so losing a replica fails no call.
BALANCED_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        # Client-side health checking: round_robin uses only the servers whose health service
        # says SERVING, so a replica that is starting (its port opens before its model is
        # loaded) or draining gets no calls until it is ready.
        "healthCheckConfig": {"serviceName": SERVICE},
        "methodConfig": [
            {
                "name": [{"service": SERVICE}],
                "waitForReady": True,
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


def channel_options(extra: ChannelOptions = (), target: str = "") -> list[tuple[str, Any]]:
    """Our defaults, then the caller's (gRPC takes the last value given for a key).

    A `target` of several servers gets BALANCED_SERVICE_CONFIG: an address list
    (`ipv4:10.0.0.1:50070,10.0.0.1:50071`, `unix:/run/facedet/front-end-0.sock,/run/...`:
    replicas, or the front ends of a server with --front-end-listen) or a DNS name
    (`dns:///facedet.default.svc:50051`, a Kubernetes headless Service: every ready pod)."""
    balancing = (
        [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.service_config", BALANCED_SERVICE_CONFIG),
            # A replica that comes back gets calls within a few seconds: gRPC's own reconnect
            # backoff grows to 120 s, which would leave a restarted replica idle for minutes.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 3000),
            # gRPC keeps a call for a retry only up to 256 KiB by default: a photo is larger, and
            # a call that cannot be retried fails when its replica dies.
            ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES),
        ]
        if is_balanced_target(target)
        else []
    )
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *balancing,
        *extra,
    ]


def lists_several_addresses(target: str) -> bool:
    """Whether `target` names several addresses itself (gRPC's ipv4:, ipv6: and unix: schemes
    take a comma-separated list)."""
    scheme, _, addresses = target.partition(":")
    return scheme in ("ipv4", "ipv6", "unix") and "," in addresses


def is_balanced_target(target: str) -> bool:
    """Whether calls to `target` are spread over several servers: an address list, or a
    `dns:` name, which may resolve to several (one per replica behind a headless Service)."""
    return lists_several_addresses(target) or target.startswith("dns:")


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client proves itself and checks the server. Any of the three PEM byte strings
    turns TLS on: `root_certificates` the CA that signed the server's certificate (None: the
    system's), `certificate_chain` + `private_key` this client's certificate for mutual TLS.
    `token` is sent on every call as `authorization: Bearer <token>` (over plaintext too: keep
    that to unix sockets and loopback)."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    token: str | None = None

    @property
    def uses_tls(self) -> bool:
        return any(x is not None for x in (self.root_certificates, self.certificate_chain, self.private_key))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []


def read_token_file(path: str | Path) -> str:
    """The one token a --token-file holds, without its trailing newline."""
    return Path(path).read_text().strip()


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc,type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc,type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc,type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc,type-arg]
):
    """Adds the token's metadata to every call of a blocking channel."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), *self._metadata],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def open_channel(target: str, options: ChannelOptions, security: ChannelSecurity) -> grpc.Channel:
    """A blocking channel to `target`: TLS and the token as `security` says."""
    if security.uses_tls:
        channel = grpc.secure_channel(target, security.credentials(), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    metadata = security.metadata()
    return grpc.intercept_channel(channel, _TokenInterceptor(metadata)) if metadata else channel


class _AsyncUnaryToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_async_details(details, self._metadata), request)


class _AsyncStreamToken(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = metadata

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_async_details(details, self._metadata), requests)


def _async_details(details: Any, metadata: list[tuple[str, str]]) -> Any:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*(details.metadata or ()), *metadata),
        details.credentials,
        details.wait_for_ready,
    )


def open_aio_channel(target: str, options: ChannelOptions, security: ChannelSecurity) -> grpc.aio.Channel:
    """An asyncio channel to `target`: TLS and the token as `security` says."""
    metadata = security.metadata()
    interceptors: Any = [_AsyncUnaryToken(metadata), _AsyncStreamToken(metadata)] if metadata else None
    if security.uses_tls:
        return grpc.aio.secure_channel(target, security.credentials(), options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options, interceptors=interceptors)


# grpc.health.v1 is two one-field messages; coding them here spares every user of the client
# a dependency on grpcio-health-checking.
_HEALTH_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_health_request(service: str) -> bytes:
    """HealthCheckRequest{service}: field 1, length-delimited."""
    name = service.encode()
    return b"\x0a" + _varint(len(name)) + name if name else b""


def decode_health_response(data: bytes) -> str:
    """HealthCheckResponse{status}: field 1, varint; fields we do not know are skipped."""
    status, pos = 0, 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            if field == 1:
                status = value
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire_type} in a health response")
    return _HEALTH_STATUSES.get(status, str(status))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint in a health response")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
