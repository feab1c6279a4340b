"""Hostile inputs, made byte by byte: images whose few bytes claim a lot of work or memory.

Each maker returns the bytes of one `DetectFacesRequest.encoded` (or a raw frame's fields);
tests/test_hostile_input.py sends them to a real server and bounds its time and peak memory,
and `python -m facedet_bench.hostile` prints the same figures for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc

from facedet_bench.own_server import OwnServer, peak_rss_mib, reset_peak_rss, rss_mib


class _Bits:
    """An MSB-first bit writer with JPEG byte stuffing (0xFF -> 0xFF 0x00)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._n = 0

    def write(self, value: int, length: int) -> None:
        for shift in range(length - 1, -1, -1):
            self._acc = (self._acc << 1) | ((value >> shift) & 1)
            self._n += 1
            if self._n == 8:
                self._flush_byte()

    def _flush_byte(self) -> None:
        self.out.append(self._acc)
        if self._acc == 0xFF:
            self.out.append(0)
        self._acc, self._n = 0, 0

    def finish(self) -> bytes:
        if self._n:  # pad with 1 bits, as the standard says
            self.write((1 << (8 - self._n)) - 1, 8 - self._n)
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _huffman_table(table_class: int, table_id: int, lengths: dict[int, list[int]]) -> bytes:
    """A DHT payload: `lengths` maps a code length (1..16) to its symbols."""
    counts = bytes(len(lengths.get(n, [])) for n in range(1, 17))
    symbols = bytes(s for n in range(1, 17) for s in lengths.get(n, []))
    return bytes([table_class << 4 | table_id]) + counts + symbols


EOB_RUN = 1 << 14  # blocks one EOB14 symbol (with its 14 extra bits all zero) skips


def progressive_jpeg(width: int, height: int, ac_scans: int) -> bytes:
    """A valid grayscale progressive JPEG of `width` x `height` (multiples of 8) whose picture is
    flat gray, made of one DC scan and then `ac_scans` AC scans: bands of one coefficient each,
    first at the coarsest successive approximation, then refined bit by bit (at most 63 x 14 =
    882 AC scans). Every block is zero, so each AC scan is a few EOB-run codes: the file stays
    small while the decoder still walks every block of the picture once per scan, and keeps a
    coefficient buffer of the whole picture (2 bytes a pixel) however small it decodes it."""
    if width % 8 or height % 8:
        raise ValueError("width and height must be multiples of 8")
    blocks = (width // 8) * (height // 8)
    if blocks % EOB_RUN:
        raise ValueError(f"the picture must have a multiple of {EOB_RUN} blocks")
    if not 0 <= ac_scans <= 63 * 14:
        raise ValueError("at most 882 AC scans")
    header = b"\xff\xd8"
    header += _segment(0xDB, b"\x00" + bytes([1] * 64))  # DQT 0: all ones
    header += _segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")  # SOF2, 1 component
    header += _segment(0xC4, _huffman_table(0, 0, {1: [0x00]}))  # DC: "0" = difference 0
    header += _segment(0xC4, _huffman_table(1, 0, {1: [0xE0], 2: [0x00]}))  # AC: "0" = EOB14
    dc = _Bits()
    for _ in range(blocks):
        dc.write(0, 1)
    body = _segment(0xDA, b"\x01\x01\x00" + bytes([0, 0, 0x00])) + dc.finish()
    ac = _Bits()
    for _ in range(blocks // EOB_RUN):
        ac.write(0, 1)  # EOB14
        ac.write(0, 14)  # ... of exactly 2**14 blocks
    ac_data = ac.finish()
    scans = [
        (k, ah, al) for k in range(1, 64) for ah, al in [(0, 13), *((b + 1, b) for b in range(12, -1, -1))]
    ]
    for k, ah, al in scans[:ac_scans]:
        body += _segment(0xDA, b"\x01\x01\x00" + bytes([k, k, ah << 4 | al])) + ac_data
    return header + body + b"\xff\xd9"


def jpeg_claiming(width: int, height: int, data: bytes) -> bytes:
    """`data` (a baseline JPEG) with its frame header patched to claim `width` x `height`: a
    tiny file declaring a huge picture, whose entropy data then runs out."""
    at = data.find(b"\xff\xc0")
    if at < 0:
        raise ValueError("no baseline SOF0 marker")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int, height: int, rows: bytes, *, bit_depth: int = 8, extra_chunks: int = 0) -> bytes:
    """A truecolor PNG from already filtered `rows`, compressed at zlib level 9, with
    `extra_chunks` empty ancillary chunks before the image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    extra = _png_chunk(b"tEXt", b"") * extra_chunks
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + extra
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


def png_bomb(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A black PNG: `width` x `height` x 3 channels of zeros deflate about 1000:1."""
    row = bytes(1 + width * 3 * bit_depth // 8)
    return png(width, height, row * height, bit_depth=bit_depth)


def png_with_trailing_zlib(width: int, height: int, extra_bytes: int) -> bytes:
    """A small PNG whose zlib stream inflates to `extra_bytes` more than its picture needs
    (compressed a MiB at a time, so making it needs no such memory)."""
    deflate = zlib.compressobj(9)
    parts = [deflate.compress(bytes(1 + width * 3) * height)]
    block = bytes(1 << 20)
    for start in range(0, extra_bytes, len(block)):
        parts.append(deflate.compress(block[: min(len(block), extra_bytes - start)]))
    parts.append(deflate.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def png_with_many_chunks(width: int, height: int, chunks: int) -> bytes:
    """A small PNG preceded by `chunks` empty tEXt chunks (12 bytes each)."""
    row = bytes(1 + width * 3)
    return png(width, height, row * height, extra_chunks=chunks)


def small_jpeg(side: int = 16) -> bytes:
    """A valid gray baseline JPEG of `side` x `side` pixels (the tiny request)."""
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".jpg", np.full((side, side, 3), 128, np.uint8))
    assert ok
    return bytes(buf.tobytes())


def _baseline_jpeg(side: int = 64) -> bytes:
    return small_jpeg(side)


@dataclass(frozen=True)
class Case:
    """One hostile request, what the server must answer, and the bounds it must stay in."""

    name: str
    what: str  # for the table in docs/reliability.md
    limit: str  # the limit that bounds it, as docs/reliability.md states it
    code: str  # the gRPC status name expected
    message: str  # a piece of the expected error message ("" for OK)
    make: Callable[[], pb.DetectFacesRequest]
    max_seconds: float  # wall time of the call, with room for a busy 2-core CI machine
    max_peak_growth_mib: float  # server VmHWM above its RSS before the call


def _encoded(data: Callable[[], bytes]) -> Callable[[], pb.DetectFacesRequest]:
    return lambda: pb.DetectFacesRequest(encoded=data())


def _raw(width: int, height: int, fmt: str, size: int) -> Callable[[], pb.DetectFacesRequest]:
    return lambda: pb.DetectFacesRequest(
        raw=pb.RawImage(
            width=width, height=height, format=getattr(pb, f"PIXEL_FORMAT_{fmt}"), data=bytes(size)
        )
    )


MIB = 1 << 20
MAX_MESSAGE = 16 * MIB  # the server's default --max-message-bytes
# A raw RGB8 frame whose request is as large as the default limit allows.
MAX_RAW = (2048, 2730)

CASES: tuple[Case, ...] = (
    Case(
        "jpeg_claims_49mpx",
        "2 KB baseline JPEG whose header claims 7000x7000 (49 Mpx)",
        "under --max-pixels, so decoded: libjpeg-turbo stops where the data ends",
        "INVALID_ARGUMENT",
        "corrupt or truncated",
        _encoded(lambda: jpeg_claiming(7000, 7000, _baseline_jpeg()[:2000])),
        2.0,
        200,
    ),
    Case(
        "jpeg_claims_3600mpx",
        "2 KB baseline JPEG whose header claims 60000x60000",
        "--max-pixels (50 Mpx), checked from the header before any decode",
        "INVALID_ARGUMENT",
        "over the server limit",
        _encoded(lambda: jpeg_claiming(60000, 60000, _baseline_jpeg()[:2000])),
        1.0,
        50,
    ),
    Case(
        "progressive_883_scans",
        "127 KB progressive JPEG, 8192x4096, 883 scans (22 s to decode unchecked)",
        "scans x pixels <= 1e9 and scans <= 500, counted before decode",
        "INVALID_ARGUMENT",
        "scans",
        _encoded(lambda: progressive_jpeg(8192, 4096, 882)),
        1.0,
        50,
    ),
    Case(
        "progressive_at_budget",
        "progressive JPEG, 8192x4096, 29 scans: the most the budget admits at that size",
        "scans x pixels <= 1e9; coefficient buffer 2 bytes/pixel/component",
        "OK",
        "",
        _encoded(lambda: progressive_jpeg(8192, 4096, 28)),
        8.0,
        400,
    ),
    Case(
        "png_bomb_49mpx",
        "143 KB black PNG of 7000x7000 (49 Mpx, ~1000:1 deflate)",
        "--max-pixels; decoded in full (about 7 bytes/pixel)",
        "OK",
        "",
        _encoded(lambda: png_bomb(7000, 7000)),
        15.0,
        700,
    ),
    Case(
        "png_zlib_1gb",
        "1 MB PNG of 64x64 whose zlib stream inflates to 1 GB (5 s unchecked)",
        "inflated first up to 1.25x the picture's size + 64 KiB",
        "INVALID_ARGUMENT",
        "inflates to more than",
        _encoded(lambda: png_with_trailing_zlib(64, 64, 1 << 30)),
        1.0,
        50,
    ),
    Case(
        "png_1m_chunks",
        "15.6 MB PNG with 1.3 million empty chunks (7 s and a stderr line each, unchecked)",
        "<= 100,000 chunks, <= 1,000 ancillary",
        "INVALID_ARGUMENT",
        "chunks",
        _encoded(lambda: png_with_many_chunks(64, 64, 1_300_000)),
        2.0,
        100,
    ),
    Case(
        "png_chunk_claims_4gb",
        "110-byte PNG whose IDAT claims 4 GB (4 GB and 4 s before the fix)",
        "chunk lengths checked against the data",
        "INVALID_ARGUMENT",
        "claims",
        _encoded(lambda: png(64, 48, b"")[:33] + struct.pack(">I", 0xF8FFFF7C) + b"IDAT" + bytes(64)),
        1.0,
        50,
    ),
    Case(
        "raw_size_lies_short",
        "raw RGB8 frame claiming 7000x7000 with 1 KB of data",
        "data length must equal width x height x channels",
        "INVALID_ARGUMENT",
        "needs",
        _raw(7000, 7000, "RGB8", 1024),
        1.0,
        50,
    ),
    Case(
        "raw_size_lies_huge",
        "raw GRAY8 frame claiming 100000x100000",
        "--max-pixels, before the data is looked at",
        "INVALID_ARGUMENT",
        "over the server limit",
        _raw(100_000, 100_000, "GRAY8", 16),
        1.0,
        50,
    ),
    Case(
        "max_size_raw",
        f"raw RGB8 frame of {MAX_RAW[0]}x{MAX_RAW[1]}: a request just under 16 MiB",
        "--max-message-bytes (16 MiB); gRPC holds the message, decode a copy",
        "OK",
        "",
        _raw(MAX_RAW[0], MAX_RAW[1], "RGB8", MAX_RAW[0] * MAX_RAW[1] * 3),
        8.0,
        250,
    ),
    Case(
        "over_max_size",
        "a request of 16 MiB + 1 KiB",
        "--max-message-bytes, refused before decode",
        "RESOURCE_EXHAUSTED",
        "larger than the server's max",
        _encoded(lambda: b"\xff\xd8\xff" + bytes(MAX_MESSAGE + 1024)),
        4.0,
        150,
    ),
)


@dataclass(frozen=True)
class Measured:
    case: Case
    code: str
    message: str
    seconds: float
    peak_growth_mib: float  # server VmHWM during the call minus its RSS before


def measure(stub: pb_grpc.FaceDetectorStub, pid: int, case: Case, timeout: float = 120.0) -> Measured:
    """Send `case` once; the server's peak RSS is reset first, so the growth is this call's."""
    request = case.make()
    before = rss_mib(pid)
    reset_peak_rss(pid)
    started = time.perf_counter()
    try:
        stub.DetectFaces(request, timeout=timeout)
        code, message = "OK", ""
    except grpc.RpcError as exc:
        code, message = exc.code().name, str(exc.details())  # type: ignore[attr-defined]
    seconds = time.perf_counter() - started
    return Measured(case, code, message, seconds, peak_rss_mib(pid) - before)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m facedet_bench.hostile",
        description="send each hostile input to a server started here; print the docs/reliability.md table",
    )
    parser.add_argument("--model", required=True, help="model file for the server")
    parser.add_argument("--repeat", type=int, default=3, help="calls per input; the worst is reported")
    args = parser.parse_args()
    with (
        OwnServer(args.model) as server,
        grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel,
    ):
        stub = pb_grpc.FaceDetectorStub(channel)
        print("| input | limit | status | time (worst) | server peak RSS growth (worst) |")
        print("|---|---|---|---|---|")
        for case in CASES:
            runs = [measure(stub, server.pid, case) for _ in range(args.repeat)]
            worst_s = max(r.seconds for r in runs)
            worst_mib = max(r.peak_growth_mib for r in runs)
            codes = "/".join(sorted({r.code for r in runs}))
            print(
                f"| {case.what} | {case.limit} | {codes} | {worst_s:.2f} s | {worst_mib:.0f} MiB |",
                flush=True,
            )


CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", 64 * MIB)]


if __name__ == "__main__":
    main()
