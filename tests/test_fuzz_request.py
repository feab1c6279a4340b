"""A short, seeded fuzz of the request path (protobuf -> mapping -> decode -> prepare), plus the
inputs it has found that once crashed, as regressions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from facedet_bench.fuzz_request import make_target

# Inputs found by `python -m facedet_bench.fuzz_request` that once raised something other than a
# DetectError; each must now be answered as a bad request (or accepted).
REGRESSIONS: list[bytes] = [
    b"",
    b"\x12\x00",  # raw image with every field zero
    b"\x12\x06\x08\x01\x10\x01\x18\x01",  # 1x1 RGB8 without data
]


# Found by the fuzzer (a libFuzzer out-of-memory, not an exception): a 64x48 PNG whose IDAT chunk
# claims 4,177,526,652 bytes. OpenCV 5's PNG reader allocates (and touches) the claimed length
# before noticing the data is short, so this 110-byte request cost ~4 GB of memory and ~4 s
# before it was refused as corrupt. image/decode.py now refuses PNG chunks that run past the data
# before OpenCV sees them.
PNG_HUGE_IDAT_REQUEST = (
    b"\nk\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00@\x00\x00\x000\x08\x02\x00\x00\x00.)\xebH"
    b"\xf8\xff\xff|IDATx\x9c" + b"\x00" * 64
)
PEAK_MEMORY_MB = 1024

# The peak RSS of this process image, from /proc: getrusage's ru_maxrss would also carry the
# peak of the process it was forked from (Linux keeps it across exec), here pytest's.
_MEASURE_PEAK = """
import re, sys
from facedet_bench.fuzz_request import make_target
make_target()(bytes.fromhex(sys.argv[1]))
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) // 1024)
"""


def test_png_with_a_huge_chunk_length_is_refused_without_a_huge_allocation() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE_PEAK, PNG_HUGE_IDAT_REQUEST.hex()],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert int(result.stdout.split()[-1]) < PEAK_MEMORY_MB


@pytest.mark.parametrize("data", REGRESSIONS)
def test_known_inputs_are_answered(data: bytes) -> None:
    make_target()(data)


def test_seeded_fuzz_run_finds_no_crash(tmp_path: Path) -> None:
    # A subprocess: atheris ends its process when the run is over.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "facedet_bench.fuzz_request",
            "--seconds",
            "20",
            "--runs",
            "2000",
            "--seed",
            "1",
        ],
        check=False,
        cwd=str(tmp_path),
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done 2000 runs" in result.stderr
