"""Where the torch backend keeps inductor's compiled artifacts (runtime.torch_cuda): in
$FACEDET_HOME/inductor unless the user set $TORCHINDUCTOR_CACHE_DIR, so a container that keeps
$FACEDET_HOME on a volume skips the minutes of compiling on its next start. Found on the H200:
importing torch._dynamo sets that variable to torch's own /tmp default, which had won."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the torch backend needs PyTorch (make test installs a CPU build)")

from facedet_server.runtime.torch_cuda import inductor_cache_dir
from facedet_test_support import REPO, clean_env

RESOLVE = """
import sys
from pathlib import Path
import torch._dynamo  # as the backend does before it picks the cache
from facedet_server.runtime.torch_cuda import inductor_cache_dir
print(inductor_cache_dir(Path(sys.argv[1])))
"""


def resolve_in_fresh_process(home: Path, env: dict[str, str]) -> str:
    python_path = os.pathsep.join(str(REPO / root) for root in ("server", "converter", "clients/python"))
    result = subprocess.run(
        [sys.executable, "-c", RESOLVE, str(home)],
        env={**env, "PYTHONPATH": python_path},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.strip()


def test_the_cache_is_in_facedet_home_although_torch_dynamo_set_its_own(tmp_path: Path) -> None:
    env = {k: v for k, v in clean_env().items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    assert resolve_in_fresh_process(tmp_path, env) == str(tmp_path / "inductor")


def test_a_cache_folder_the_user_set_wins(tmp_path: Path) -> None:
    chosen = tmp_path / "my-cache"
    env = {**clean_env(), "TORCHINDUCTOR_CACHE_DIR": str(chosen)}
    assert resolve_in_fresh_process(tmp_path / "home", env) == str(chosen)


def test_the_choice_is_put_where_inductor_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo  # noqa: F401  (sets the variable to torch's default, once per process)
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert inductor_cache_dir(tmp_path) == tmp_path / "inductor"
    assert cache_dir() == str(tmp_path / "inductor")
