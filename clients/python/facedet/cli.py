"""The `facedet` command: one program whose commands come from the packages installed beside it.

Each command group is a module with `add_parsers(subparsers)`: the server's (serve, models),
the client's (detect, stream), the benchmarks' (bench) and the converter's (convert). This module
imports none of them by name in code, only through `COMMAND_GROUPS`, so that it sits on top of
every package without tying them together: a group whose package is not installed (the
converter without torch, the server beside a client-only install) is left out of `--help`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__version__ = "0.1.0"

# (module, the top-level package that must be importable for it to count as installed)
COMMAND_GROUPS = (
    "facedet_server.app.commands",
    "facedet.client.commands",
    "facedet_bench.commands",
    "facedet_converter.commands",
)


def _load_group(name: str) -> object | None:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        # Only a missing optional package leaves a group out; a bug inside one must surface.
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        if exc.name in ("torch", "onnx", "onnxscript"):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facedet", description="Face detection over gRPC (YOLOv5-Face).")
    parser.add_argument("--version", action="version", version=f"facedet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_GROUPS:
        group = _load_group(name)
        if group is not None:
            group.add_parsers(sub)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
