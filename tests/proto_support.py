"""What the three stub-freshness tests (tests/test_proto_fresh*.py) share: loading a language's
generator from proto/, and comparing what it writes now with what is committed."""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from facedet_test_support import REPO


def load_generator(language: str) -> ModuleType:
    """proto/gen_<language>.py as a module (proto/ is no package)."""
    path = REPO / "proto" / f"gen_{language}.py"
    spec = importlib.util.spec_from_file_location(f"facedet_gen_{language}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stale_files(generated: Sequence[Path], out_dir: Path, committed: Path) -> list[str]:
    """One line (with the start of a diff) per file generated into `out_dir` that is missing or
    different under `committed`; empty when every one is fresh."""
    stale = []
    for path in generated:
        relative = path.relative_to(out_dir)
        assert path.is_file(), f"generator did not write {relative}"
        old = committed / relative
        if not old.is_file():
            stale.append(f"{relative}: not committed")
            continue
        fresh_text, old_text = path.read_text(), old.read_text()
        if fresh_text != old_text:
            old_lines, fresh_lines = old_text.splitlines(True), fresh_text.splitlines(True)
            lines = difflib.unified_diff(old_lines, fresh_lines, f"committed/{relative}", f"fresh/{relative}")
            stale.append(f"{relative} differs:\n{''.join(list(lines)[:40])}")
    return stale
