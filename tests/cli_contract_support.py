"""What the example clients' JSON Lines are compared by: the Go and C++ clients must print what
`facedet detect --json` / `facedet stream --json` print, floats within float32 tolerance."""

from __future__ import annotations

import json
import math
from typing import Any

Record = dict[str, Any]


def records(stdout: str) -> list[Record]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def same(got: Any, want: Any, where: str = "") -> None:
    """Equal JSON values, floats within float32 printing and run-to-run tolerance."""
    if isinstance(want, float) or isinstance(got, float):
        assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-3), f"{where}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (
            f"{where}: keys {sorted(got)} != {sorted(want)}"
        )
        for key in want:
            same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {len(got)} items != {len(want)}"
        for index, (g, w) in enumerate(zip(got, want, strict=True)):
            same(g, w, f"{where}[{index}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def without_timing(record: Record) -> Record:
    return {k: v for k, v in record.items() if k != "timing"}
