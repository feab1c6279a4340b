"""Count a JPEG's scans before libjpeg-turbo decodes it.

A progressive JPEG may hold hundreds of scans, and the decoder walks every block of the picture
once per scan whatever the file's size: a 127 KB grayscale file of 8192 x 4096 pixels with 883
scans (facedet_bench.hostile.progressive_jpeg) took 22 s of one core. Normal files have 1
(baseline) to about 10 (libjpeg's progressive script) or 20 (mozjpeg) scans. So the decoder is
only given a file whose scans times pixels fit a budget; the count is a walk over the segment
headers, with the entropy-coded data skipped by a vectorised search for its end marker.
"""

from __future__ import annotations

import numpy as np

from facedet_server.errors import InvalidImage

# The most scans any JPEG may have (libjpeg-turbo's own TJFLAG_LIMITSCANS allows 500).
MAX_SCANS = 500
# Scans times pixels, at most: 20 scans of a 50 Mpx picture, 100 of a 10 Mpx one. A scan is
# counted as the whole picture even where it covers one component: simpler, and conservative.
MAX_SCAN_PIXELS = 1_000_000_000

_SOS = 0xDA
_EOI = 0xD9
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field


def _marker_positions(data: bytes) -> np.ndarray:
    """Offsets of every 0xFF that starts a marker (not a stuffed 0xFF00, an RSTn or a fill byte).
    Inside segments' payloads (an EXIF thumbnail) there are false ones; only the positions after
    a scan's header are ever looked up, where entropy-coded data cannot hold any."""
    array = np.frombuffer(data, np.uint8)
    ff = np.flatnonzero(array[:-1] == 0xFF)
    following = array[ff + 1]
    real = (following != 0x00) & (following != 0xFF) & ((following < 0xD0) | (following > 0xD7))
    positions: np.ndarray = ff[real]
    return positions


def count_scans(data: bytes, limit: int) -> int:
    """The number of SOS segments in `data`, counted up to `limit` + 1 (the walk stops there).
    A structure it cannot follow ends the count: the decoder then reports the damage itself."""
    markers: np.ndarray | None = None
    scans = 0
    pos = 2  # after SOI
    size = len(data)
    while pos + 4 <= size and scans <= limit:
        if data[pos] != 0xFF:
            return scans
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            return scans
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 2 + length
        if marker != _SOS:
            continue
        scans += 1
        if markers is None:
            markers = _marker_positions(data)
        at = int(np.searchsorted(markers, pos))
        if at == len(markers):
            return scans
        pos = int(markers[at])
    return scans


def check_scans(data: bytes, width: int, height: int) -> None:
    """Refuse a JPEG whose scans would cost more than the budget (module docstring)."""
    limit = min(MAX_SCANS, MAX_SCAN_PIXELS // max(width * height, 1))
    scans = count_scans(data, limit)
    if scans > limit:
        raise InvalidImage(
            f"JPEG has more than {limit} scans for its {width}x{height} pixels; the server decodes at "
            f"most {MAX_SCANS} scans and {MAX_SCAN_PIXELS // 1_000_000} million scan-pixels "
            "(a normal progressive JPEG has about 10 scans)"
        )
