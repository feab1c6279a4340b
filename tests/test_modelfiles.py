"""The model downloader: mirror -> cache -> download, sha256 checks, and helpful failures, against a
local HTTP server serving the shared model file (good and corrupted)."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from facedet_server.model import files as modelfiles
from facedet_server.model.files import REGISTRY, ModelFileError, download, pull, resolve_model
from facedet_test_support import MODEL, free_port, run_cli

NAME = "yolov5n-0.5"
ENTRY = REGISTRY[NAME]


@dataclass
class FileServer:
    base: str
    root: Path
    requests: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    if not MODEL.is_file():
        pytest.fail(f"model file not found at {MODEL}", pytrace=False)
    return MODEL.read_bytes()


@pytest.fixture(scope="module")
def file_server(tmp_path_factory: pytest.TempPathFactory, model_bytes: bytes) -> Iterator[FileServer]:
    """Serves good.onnx (the shared model), corrupt.onnx (one byte flipped) and truncated.onnx."""
    root = tmp_path_factory.mktemp("http")
    (root / "good.onnx").write_bytes(model_bytes)
    corrupt = bytearray(model_bytes)
    corrupt[len(corrupt) // 2] ^= 0xFF
    (root / "corrupt.onnx").write_bytes(bytes(corrupt))
    (root / "truncated.onnx").write_bytes(model_bytes[: len(model_bytes) // 2])
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield FileServer(f"http://127.0.0.1:{httpd.server_address[1]}", root, seen)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def http(file_server: FileServer) -> FileServer:
    file_server.requests.clear()
    return file_server


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No mirror, the cache in tmp, and no proxy between us and 127.0.0.1."""
    monkeypatch.delenv("FACEDET_MODEL_DIR", raising=False)
    monkeypatch.delenv("FACEDET_MODEL", raising=False)
    monkeypatch.setenv("FACEDET_HOME", str(tmp_path / "home"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.part")) if folder.exists() else []


def test_registry_pins_the_shared_model(model_bytes: bytes) -> None:
    assert hashlib.sha256(model_bytes).hexdigest() == ENTRY.sha256
    assert ENTRY.filename == "yolov5n-0.5.onnx"
    assert ENTRY.url.startswith("https://")


# --- download ------------------------------------------------------------------------------


def test_download_good(http: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "model.onnx"
    assert download(http.url("good.onnx"), dest, ENTRY.sha256) == dest
    assert sha256(dest) == ENTRY.sha256
    assert leftovers(dest.parent) == []
    assert http.requests == ["/good.onnx"]


@pytest.mark.parametrize("name", ["corrupt.onnx", "truncated.onnx"])
def test_download_refuses_wrong_sha256(http: FileServer, tmp_path: Path, name: str) -> None:
    dest = tmp_path / "out" / "model.onnx"
    with pytest.raises(ModelFileError) as info:
        download(http.url(name), dest, ENTRY.sha256)
    message = str(info.value)
    assert "sha256" in message and ENTRY.sha256 in message and "refus" in message, message
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_download_does_not_replace_existing_file_with_bad_one(http: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"previous")
    with pytest.raises(ModelFileError):
        download(http.url("corrupt.onnx"), dest, ENTRY.sha256)
    assert dest.read_bytes() == b"previous"


# --- pull: mirror -> cache -> download ---------------------------------------------------------


def test_pull_downloads_into_cache(http: FileServer, tmp_path: Path) -> None:
    home = tmp_path / "h"
    path = pull(NAME, home=home, url=http.url("good.onnx"))
    assert path == home / "models" / ENTRY.filename == modelfiles.cache_path(ENTRY, home)
    assert sha256(path) == ENTRY.sha256
    assert http.requests == ["/good.onnx"]
    # Second time: served from the cache, no request (the URL would fail now anyway).
    assert pull(NAME, home=home, url=http.url("corrupt.onnx")) == path
    assert http.requests == ["/good.onnx"]


def test_pull_uses_facedet_home(http: FileServer, tmp_path: Path) -> None:
    path = pull(NAME, url=http.url("good.onnx"))
    assert path == tmp_path / "home" / "models" / ENTRY.filename


def test_pull_refuses_corrupt_download(http: FileServer, tmp_path: Path) -> None:
    home = tmp_path / "h"
    with pytest.raises(ModelFileError) as info:
        pull(NAME, home=home, url=http.url("corrupt.onnx"))
    assert "sha256" in str(info.value)
    assert not (home / "models" / ENTRY.filename).exists()
    assert leftovers(home / "models") == []


def test_pull_prefers_mirror_and_keeps_a_copy_in_the_cache(http: FileServer, tmp_path: Path) -> None:
    home = tmp_path / "h"
    path = pull(NAME, home=home, mirror=MODEL.parent, url=http.url("good.onnx"))
    assert path == modelfiles.cache_path(ENTRY, home)
    assert sha256(path) == ENTRY.sha256
    assert http.requests == []
    assert leftovers(path.parent) == []
    # Later: found in the cache without the mirror, and without the network (the URL fails).
    assert pull(NAME, home=home, url=http.url("corrupt.onnx")) == path
    assert http.requests == []


def test_pull_replaces_a_bad_cached_copy_from_the_mirror(tmp_path: Path) -> None:
    home = tmp_path / "h"
    cached = modelfiles.cache_path(ENTRY, home)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a model")
    assert pull(NAME, home=home, mirror=MODEL.parent) == cached
    assert sha256(cached) == ENTRY.sha256


def test_pull_without_a_writable_cache_returns_the_mirror(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.write_bytes(b"")  # a file where the cache's folder would go: it cannot be made
    assert pull(NAME, home=home, mirror=MODEL.parent) == MODEL.parent / ENTRY.filename


def test_pull_can_leave_the_cache_alone(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert pull(NAME, home=home, mirror=MODEL.parent, cache_mirror=False) == MODEL.parent / ENTRY.filename
    assert not modelfiles.cache_path(ENTRY, home).exists()


def test_pull_mirror_from_environment(
    http: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEDET_MODEL_DIR", str(MODEL.parent))
    home = tmp_path / "h"
    assert pull(NAME, home=home, url=http.url("good.onnx")) == modelfiles.cache_path(ENTRY, home)
    assert http.requests == []


def test_pull_mirror_without_the_file_falls_back(http: FileServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    path = pull(NAME, home=tmp_path / "h", mirror=empty, url=http.url("good.onnx"))
    assert path == tmp_path / "h" / "models" / ENTRY.filename
    assert http.requests == ["/good.onnx"]


def test_pull_refuses_corrupt_mirror(http: FileServer, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / ENTRY.filename).write_bytes((http.root / "corrupt.onnx").read_bytes())
    with pytest.raises(ModelFileError) as info:
        pull(NAME, home=tmp_path / "h", mirror=mirror, url=http.url("good.onnx"))
    message = str(info.value)
    assert str(mirror / ENTRY.filename) in message and "sha256" in message, message


def test_pull_refuses_corrupt_cache(http: FileServer, tmp_path: Path) -> None:
    home = tmp_path / "h"
    cached = home / "models" / ENTRY.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a model")
    with pytest.raises(ModelFileError) as info:
        pull(NAME, home=home, url=http.url("good.onnx"))
    assert str(cached) in str(info.value) and "sha256" in str(info.value)


@pytest.mark.parametrize("where", ["404", "refused"])
def test_failed_download_says_how_to_supply_the_file(http: FileServer, tmp_path: Path, where: str) -> None:
    url = http.url("missing.onnx") if where == "404" else f"http://127.0.0.1:{free_port()}/x.onnx"
    home = tmp_path / "h"
    with pytest.raises(ModelFileError) as info:
        pull(NAME, home=home, url=url)
    message = str(info.value)
    assert url in message
    assert ENTRY.filename in message and ENTRY.sha256 in message
    assert "FACEDET_MODEL_DIR" in message and "--model" in message
    assert str(home / "models") in message
    assert leftovers(home / "models") == []


def test_unknown_model_name(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as info:
        pull("yolov99", home=tmp_path)
    assert "unknown model" in str(info.value) and NAME in str(info.value)


# --- resolve_model (what `serve --model` uses) --------------------------------------------------


def test_resolve_model_path() -> None:
    assert resolve_model(str(MODEL)) == MODEL


def test_resolve_model_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as info:
        resolve_model(str(tmp_path / "missing.onnx"))
    assert "does not exist" in str(info.value)


def test_resolve_model_name_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEDET_MODEL_DIR", str(MODEL.parent))
    # The served form of the mirror's file (tests/test_default_model.py says which form).
    assert resolve_model(NAME) == resolve_model(None)  # the default model
    assert resolve_model(NAME).name.startswith(Path(ENTRY.filename).stem)
    # Serving reads the mirror in place: only `facedet models pull` copies it into the cache.
    assert not modelfiles.cache_path(ENTRY).exists()
    monkeypatch.setenv("FACEDET_MODEL", str(MODEL))
    assert resolve_model(None) == MODEL


# --- the CLI -----------------------------------------------------------------------------------


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {"FACEDET_HOME": str(tmp_path / "clihome"), "no_proxy": "*", "NO_PROXY": "*"}


def test_cli_models_pull(http: FileServer, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    before = run_cli("models", "list", env=env)
    assert before.returncode == 0 and "not cached" in before.stdout
    result = run_cli("models", "pull", NAME, "--url", http.url("good.onnx"), env=env)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == tmp_path / "clihome" / "models" / ENTRY.filename
    assert sha256(path) == ENTRY.sha256
    assert http.requests == ["/good.onnx"]
    listed = run_cli("models", "list", env=env)
    line = next(line for line in listed.stdout.splitlines() if line.startswith(NAME))
    assert "\tcached\t" in line, listed.stdout


def test_cli_models_pull_corrupt(http: FileServer, tmp_path: Path) -> None:
    result = run_cli("models", "pull", NAME, "--url", http.url("corrupt.onnx"), env=cli_env(tmp_path))
    assert result.returncode == 1
    assert "sha256" in result.stderr and result.stderr.startswith("facedet models pull:"), result.stderr
    assert not (tmp_path / "clihome" / "models" / ENTRY.filename).exists()


def test_cli_models_pull_unreachable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/yolov5n-0.5.onnx"
    result = run_cli("models", "pull", NAME, "--url", url, env=cli_env(tmp_path))
    assert result.returncode == 1
    assert "FACEDET_MODEL_DIR" in result.stderr and "--model" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_models_pull_from_mirror_fills_the_cache(tmp_path: Path) -> None:
    """What `make serve` relies on: a pull with the Makefile's mirror leaves the model in the
    cache, where a pull without the mirror and without the network then finds it."""
    env = cli_env(tmp_path)
    result = run_cli("models", "pull", NAME, env={**env, "FACEDET_MODEL_DIR": str(MODEL.parent)})
    assert result.returncode == 0, result.stderr
    cached = tmp_path / "clihome" / "models" / ENTRY.filename
    assert Path(result.stdout.strip()) == cached and sha256(cached) == ENTRY.sha256
    offline = run_cli("models", "pull", NAME, "--url", f"http://127.0.0.1:{free_port()}/x.onnx", env=env)
    assert offline.returncode == 0, offline.stderr
    assert Path(offline.stdout.strip()) == cached
