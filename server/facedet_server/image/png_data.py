"""Bound the work of a PNG's zlib stream before OpenCV inflates it.

zlib inflates up to about 1000 bytes per byte sent, and libpng keeps inflating image data past
what the picture needs (it warns "Too much image data" and goes on): a 1 MB PNG of 64 x 64
pixels whose stream inflates to 1 GB took 5 s of one core (facedet_bench.hostile
.png_with_trailing_zlib), so a 16 MiB message could cost over a minute. So the stream is first
inflated here, a piece at a time into a small buffer, and only as far as a little past the size
the header implies (a quarter more and 64 KiB, room for sloppy encoders that libpng tolerates):
the work is bounded by the picture's size (itself bounded by --max-pixels), whatever the stream
holds. That costs a second inflate of a normal PNG (inflating runs at some
hundreds of MB/s; the picture's filtering and colour conversion cost more).
"""

from __future__ import annotations

import struct
import zlib

from facedet_server.errors import InvalidImage

PNG_MAGIC_SIZE = 8
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7 passes: (first column, first row, column step, row step)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PIECE = 1 << 20  # bytes inflated at a time


def image_data_size(width: int, height: int, bit_depth: int, colour_type: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines (a filter byte per row) the picture needs."""
    bits = _CHANNELS.get(colour_type, 4) * bit_depth

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if not interlaced:
        return rows(width, height)
    return sum(
        rows((width - x + dx - 1) // dx if width > x else 0, (height - y + dy - 1) // dy if height > y else 0)
        for x, y, dx, dy in _ADAM7
    )


def check_png_data(data: bytes) -> None:
    """Refuse a PNG whose IDAT stream inflates to more than its picture needs. Called after
    `check_png_chunks`, so every chunk is within `data`; a stream that is corrupt or short is
    left for the decoder to report."""
    if len(data) < 33:
        return
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    needed = image_data_size(width, height, bit_depth, colour_type, interlace == 1)
    allowed = needed + needed // 4 + 65536
    inflate = zlib.decompressobj()
    produced = 0
    offset = PNG_MAGIC_SIZE
    while offset + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4 : offset + 8]
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            pending = memoryview(data)[offset + 8 : offset + 8 + length]
            while pending:
                try:
                    out = inflate.decompress(pending, min(_PIECE, allowed + 1 - produced))
                except zlib.error:
                    return  # corrupt: OpenCV says so
                produced += len(out)
                if produced > allowed:
                    raise InvalidImage(
                        f"PNG image data inflates to more than {allowed} bytes, where its {width}x{height} "
                        f"pixels need {needed}; the server refuses such a stream"
                    )
                pending = memoryview(inflate.unconsumed_tail) if inflate.unconsumed_tail else pending[:0]
                if inflate.eof:
                    return
        offset += 12 + length
