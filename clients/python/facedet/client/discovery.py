"""Front-end discovery: a server of several front-end processes (`facedet serve --processes N`)
publishes each front end's own address in GetModelInfo.front_end_addresses. A client that
dialed the shared address can then spread its calls over every front end with gRPC's
round_robin, instead of leaving it to SO_REUSEPORT's hash of its one connection, which sends
everything to one front end.

The server publishes addresses as it listens on them, so a wildcard host (0.0.0.0, [::]) means
"the host you reached me at": it is replaced by the host the client dialed. Names are resolved
here, since gRPC's list targets (`ipv4:a:p,b:p`) take IP literals only.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

_WILDCARDS = ("0.0.0.0", "::", "[::]", "")
_OTHER_SCHEMES = ("unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:", "xds:", "google-c2p:")


def dialed_host(target: str) -> str | None:
    """The host of a single-address target ("10.0.0.5:50051", "dns:///svc:50051"); None for
    targets discovery leaves alone (unix sockets, lists, other schemes)."""
    if target.startswith("dns:"):
        target = target[len("dns:") :].lstrip("/")
        if "/" in target:  # dns://authority/host:port
            target = target.rsplit("/", 1)[1]
    elif "," in target or "://" in target or target.startswith(_OTHER_SCHEMES):
        return None
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host


def dialable(published: Sequence[str], dialed: str) -> list[str]:
    """The published TCP addresses as `host:port` with IP literal hosts (IPv6 in brackets),
    wildcards replaced by the dialed host; unix sockets and what does not resolve are left out.
    Empty when `dialed` is no single TCP address."""
    host = dialed_host(dialed)
    if host is None:
        return []
    out = []
    for address in published:
        if address.startswith("unix:"):
            continue
        name, _, port = address.rpartition(":")
        if not port.isdigit():
            continue
        if name in _WILDCARDS:
            name = host
        literal = _ip_literal(name.strip("[]"), int(port))
        if literal is not None:
            out.append(f"[{literal}]:{port}" if ":" in literal else f"{literal}:{port}")
    return out


def list_target(addresses: Sequence[str]) -> str:
    """gRPC's target for a list of `host:port` addresses with IP literal hosts (all IPv4 or
    all IPv6: one scheme per target; IPv4 ones are kept when they are mixed)."""
    v4 = [a for a in addresses if not a.startswith("[")]
    if v4:
        return "ipv4:" + ",".join(v4)
    return "ipv6:" + ",".join(addresses)


def _ip_literal(host: str, port: int) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:  # a name: its first IPv4 address, else its first address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    addresses = [str(info[4][0]) for info in infos]
    v4 = [a for a in addresses if ":" not in a]
    chosen = v4 or addresses
    return chosen[0] if chosen else None
