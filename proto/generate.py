"""Regenerate every committed stub from proto/: Python (clients/python/facedet/v1), Go
(clients/go/gen) and C++ (clients/cpp/gen). `make proto` runs this; the freshness tests
(tests/test_proto_fresh*.py) fail when any of the three is stale.

    python proto/generate.py [python] [go] [cpp]     # default: all three

Each language's generator is its own module (gen_python, gen_go, gen_cpp) with one function,
generate(out_dir) -> written paths, which the tests also call into a temporary folder."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LANGUAGES = ("python", "go", "cpp")


def main(argv: list[str]) -> int:
    chosen = argv or list(LANGUAGES)
    unknown = sorted(set(chosen) - set(LANGUAGES))
    if unknown:
        known = ", ".join(LANGUAGES)
        print(f"generate.py: unknown language {', '.join(unknown)} (known: {known})", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    for language in chosen:
        module = importlib.import_module(f"gen_{language}")
        out: Path = module.DEFAULT_OUT
        for path in module.generate(out):
            print(f"{language}: {path.relative_to(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
