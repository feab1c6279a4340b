"""Frames on the engine socket: one `protocol` message, msgpack-encoded, and the out-of-band
buffers it names by index (JPEG bytes, pixel and face arrays), sent as raw bytes so neither side
copies them into or out of an encoded stream.

A frame is a header (body length, buffer count), the buffer lengths, the body, then the buffers.
The receiver reads every buffer into one allocation and hands out memoryviews of it.

The body is decoded against the declared schema only (msgspec typed decode): a frame yields one
of the `protocol.Message` types, validated, or a ConnectionError; never an object of a type the
writer chose, and decoding runs no code of the writer's. The engine still creates its socket
with mode 0600 (see `server.listen`): another local user must not feed the engine work, read
what it answers or tie up its threads. It is never a network protocol.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from typing import NamedTuple

import msgspec
import numpy as np

from facedet_server.engine.protocol import Message

_HEADER = struct.Struct("!QI")  # body bytes, out-of-band buffer count
_LENGTH = struct.Struct("!Q")
# Sanity bounds: a corrupt header must not allocate terabytes.
MAX_FRAME_BYTES = 4 << 30
MAX_BUFFERS = 1 << 20
_MAX_PARTS_PER_SEND = 512  # below IOV_MAX (1024 on Linux)

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Message)


class ConnectionClosed(ConnectionError):
    """The other side closed the socket (cleanly between frames, or mid-frame)."""


class MalformedFrame(ConnectionError):
    """A frame that does not follow the protocol: the stream can no longer be trusted."""


class Frame(NamedTuple):
    message: Message
    buffers: list[memoryview]  # views of one received allocation, writable


def send_message(sock: socket.socket, message: Message, buffers: Sequence[memoryview] = ()) -> None:
    """`buffers`: flat byte views (format "B") the message names by index, sent as they are."""
    body = _ENCODER.encode(message)
    head = b"".join(
        [_HEADER.pack(len(body), len(buffers)), *(_LENGTH.pack(view.nbytes) for view in buffers), body]
    )
    _send_parts(sock, [memoryview(head), *buffers])


def recv_message(sock: socket.socket) -> Frame:
    header = _recv_exact(sock, _HEADER.size, at_start=True)
    body_len, count = _HEADER.unpack(header)
    if count > MAX_BUFFERS:
        raise MalformedFrame(f"frame claims {count} buffers (at most {MAX_BUFFERS}): corrupt stream")
    table = _recv_exact(sock, _LENGTH.size * count)
    lengths = [length for (length,) in _LENGTH.iter_unpack(table)]
    if body_len + sum(lengths) > MAX_FRAME_BYTES:
        raise MalformedFrame(
            f"frame of {body_len + sum(lengths)} bytes (at most {MAX_FRAME_BYTES}): corrupt stream"
        )
    body = _recv_exact(sock, body_len)
    # np.empty, not bytearray: zero-filling megabytes per batch held the GIL for a fifth of the
    # engine's GIL time (py-spy; docs/benchmarks.md, third pass).
    whole = memoryview(np.empty(sum(lengths), np.uint8).data).cast("B")
    _recv_into(sock, whole)
    views, offset = [], 0
    for length in lengths:
        views.append(whole[offset : offset + length])
        offset += length
    try:
        message = _DECODER.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included: a well-formed body of the wrong shape
        raise MalformedFrame(f"malformed frame: {exc}") from None
    return Frame(message, views)


def _send_parts(sock: socket.socket, parts: list[memoryview]) -> None:
    """sendall over several buffers, gathered into as few system calls as the socket takes."""
    first = 0
    while first < len(parts):
        window = parts[first : first + _MAX_PARTS_PER_SEND]
        sent = sock.sendmsg(window)
        for view in window:
            if sent < view.nbytes:
                parts[first] = view[sent:]
                break
            sent -= view.nbytes
            first += 1


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
