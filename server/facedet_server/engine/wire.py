"""Messages between front-end processes and the engine process: pickle protocol 5 with the
large buffers (JPEG bytes, pixel arrays, face arrays) sent out of band, so neither side copies
them into or out of a pickle stream.

A frame is a header (pickle length, buffer count), the buffer lengths, the pickle, then the
buffers. The receiver reads every buffer into one bytearray and hands out views of it.

Pickle runs code on load, so only processes of the same user may reach the socket: the engine
creates it with mode 0600 (see `server.listen`). It is never a network protocol.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

import numpy as np

_HEADER = struct.Struct("!QI")  # pickle bytes, out-of-band buffer count
_LENGTH = struct.Struct("!Q")
# Sanity bounds: a corrupt header must not allocate terabytes.
MAX_FRAME_BYTES = 4 << 30
MAX_BUFFERS = 1 << 20


class ConnectionClosed(ConnectionError):
    """The other side closed the socket (cleanly between frames, or mid-frame)."""


def send_message(sock: socket.socket, message: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    header = _HEADER.pack(len(body), len(views)) + b"".join(_LENGTH.pack(v.nbytes) for v in views)
    sock.sendall(header)
    sock.sendall(body)
    for view in views:
        sock.sendall(view)


def recv_message(sock: socket.socket) -> Any:
    header = _recv_exact(sock, _HEADER.size, at_start=True)
    body_len, count = _HEADER.unpack(header)
    if count > MAX_BUFFERS:
        raise ConnectionError(f"frame claims {count} buffers (at most {MAX_BUFFERS}): corrupt stream")
    table = _recv_exact(sock, _LENGTH.size * count)
    lengths = [length for (length,) in _LENGTH.iter_unpack(table)]
    if body_len + sum(lengths) > MAX_FRAME_BYTES:
        raise ConnectionError(
            f"frame of {body_len + sum(lengths)} bytes (at most {MAX_FRAME_BYTES}): corrupt stream"
        )
    body = _recv_exact(sock, body_len)
    # np.empty, not bytearray: zero-filling megabytes per batch held the GIL for a fifth of the
    # engine's GIL time (py-spy, run K).
    whole = memoryview(np.empty(sum(lengths), np.uint8).data).cast("B")
    _recv_into(sock, whole)
    views, offset = [], 0
    for length in lengths:
        views.append(whole[offset : offset + length])
        offset += length
    return pickle.loads(body, buffers=views)


def _recv_exact(sock: socket.socket, size: int, at_start: bool = False) -> bytes:
    data = bytearray(size)
    _recv_into(sock, memoryview(data), at_start)
    return bytes(data)


def _recv_into(sock: socket.socket, view: memoryview, at_start: bool = False) -> None:
    got = 0
    while got < view.nbytes:
        n = sock.recv_into(view[got:])
        if n == 0:
            where = "" if at_start and got == 0 else " in the middle of a message"
            raise ConnectionClosed(f"the other process closed the connection{where}")
        got += n
