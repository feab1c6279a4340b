"""Model files: the pinned registry, the cache, the offline mirror, download with sha256 check.

Lookup order for `facedet models pull NAME` and for serving without --model, file by file:
1. $FACEDET_MODEL_DIR/<file> (an offline mirror, e.g. ../shared/models), verified by sha256;
2. the cache, $FACEDET_HOME/models/<file> (default ~/.cache/facedet/models), verified by sha256;
3. download from the pinned URL into the cache, verified by sha256 before it is kept.
`facedet models pull` also copies a mirror's file into the cache, so that later commands find it
without $FACEDET_MODEL_DIR (`make serve` sets that variable; a shell of the user's does not).

A model may be several files (an ncnn model: the .param served, its .bin beside it): each is
pinned and checked on its own, and they always end up in one folder, the mirror's or the cache's.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog


@dataclass(frozen=True)
class PinnedFile:
    """One file of a model: its path inside the mirror and the cache, its URL and its sha256."""

    filename: str
    url: str
    sha256: str


@dataclass(frozen=True)
class ModelFile:
    """A registry model. `filename`, `url` and `sha256` pin the file that is served; `companions`
    the files it reads beside it (an ncnn .param's .bin), pulled with it."""

    name: str
    filename: str
    url: str
    sha256: str
    license: str
    format: Literal["onnx", "ncnn"] = "onnx"
    companions: tuple[PinnedFile, ...] = ()

    @property
    def files(self) -> tuple[PinnedFile, ...]:
        return (PinnedFile(self.filename, self.url, self.sha256), *self.companions)

    @property
    def weights_sha256(self) -> str:
        """The hash that names conversions of the model: its weights' file (an ncnn model's .bin,
        as the converter records it in the export's metadata)."""
        return self.companions[-1].sha256 if self.format == "ncnn" else self.sha256


_NCNN_FACE = (
    "https://raw.githubusercontent.com/FeiGeChuanShu/ncnn_Android_face/"
    "83ecdf198aeb8073450238977a52695eab17cf51/ncnn-android-yolov5_face/app/src/main/assets/"
)
REGISTRY: dict[str, ModelFile] = {
    "yolov5n-0.5": ModelFile(
        name="yolov5n-0.5",
        filename="yolov5n-0.5.onnx",
        url=(
            "https://raw.githubusercontent.com/deepcam-cn/yolov5-face/"
            "b8d9b0bbb33f5c0d96a2bec770470f5389d46f1c/torch2tensorrt/yolov5n-0.5.onnx"
        ),
        sha256="ffeda7b88900bd8fb3c3cd71876d199aca389a1378d11e07d22faf4c5fc6b4ae",
        license="GPL-3.0 (deepcam-cn/yolov5-face)",
    ),
    "yolov5n-face": ModelFile(
        name="yolov5n-face",
        filename="ncnn/yolov5n.param",
        url=_NCNN_FACE + "yolov5n.param",
        sha256="73c6cb830b9267a18d081583386f2c1409c94a6ae268df62eb902ffddf8ee9c1",
        license="GPL-3.0 (weights from deepcam-cn/yolov5-face; the ncnn repository has no licence file)",
        format="ncnn",
        companions=(
            PinnedFile(
                filename="ncnn/yolov5n.bin",
                url=_NCNN_FACE + "yolov5n.bin",
                sha256="e29985943c9d463cdf28a096cba9cf38bf7803c8f3409382d759bc129e4408ec",
            ),
        ),
    ),
}
DEFAULT_MODEL = "yolov5n-0.5"

log = structlog.get_logger("facedet.model")


class ModelFileError(Exception):
    """The model file could not be found, fetched or verified; the message says what to do."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def facedet_home() -> Path:
    return Path(os.environ.get("FACEDET_HOME") or Path.home() / ".cache" / "facedet")


def cache_path(entry: ModelFile | PinnedFile, home: Path | None = None) -> Path:
    return (home or facedet_home()) / "models" / entry.filename


def _verified(path: Path, entry: PinnedFile, name: str) -> bool:
    if not path.is_file():
        return False
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise ModelFileError(
            f"{path} has sha256 {actual}, but {name}'s {Path(entry.filename).name} must have "
            f"{entry.sha256}; delete or replace the file"
        )
    return True


def download(url: str, dest: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Fetch url to dest atomically, keeping it only when its sha256 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ModelFileError(
                f"download from {url} has sha256 {digest.hexdigest()}, expected {sha256}; refusing it"
            )
        tmp.replace(dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def registry_entry(name: str) -> ModelFile:
    if name not in REGISTRY:
        raise ModelFileError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def registry_entry_at(path: Path) -> ModelFile | None:
    """The registry model whose served file `path` is (pulled into a cache or a mirror), if any."""
    for entry in REGISTRY.values():
        if Path(path).as_posix().endswith("/" + entry.filename):
            return entry
    return None


def pull(
    name: str,
    home: Path | None = None,
    mirror: Path | None = None,
    url: str | None = None,
    cache_mirror: bool = True,
) -> Path:
    """Path to a verified local copy of a registry model's served file, fetching its files as
    needed. Files found in the mirror are copied into the cache and the cache's copy returned
    (the mirror's where the cache cannot be written), unless `cache_mirror` is false."""
    entry = registry_entry(name)
    if url is not None and entry.companions:
        raise ModelFileError(
            f"--url names one file, but {entry.name} is {len(entry.files)}: "
            f"{', '.join(f.filename for f in entry.files)}; put them in a folder laid out so and "
            "name it with FACEDET_MODEL_DIR"
        )
    mirror_value = mirror if mirror is not None else os.environ.get("FACEDET_MODEL_DIR")
    mirror_dir = Path(mirror_value) if mirror_value else None
    if mirror_dir is not None and not cache_mirror:
        mirrored = [mirror_dir / f.filename for f in entry.files]
        if all(_verified(path, f, entry.name) for path, f in zip(mirrored, entry.files, strict=True)):
            return mirrored[0]
    paths = [_fetched(entry, f, home, mirror_dir, url) for f in entry.files]
    if any(path.parent != paths[0].parent for path in paths):  # some, not all, copied from the mirror
        raise ModelFileError(
            f"{entry.name}'s files must sit in one folder, but are {', '.join(map(str, paths))}; "
            f"make {cache_path(entry, home).parent} writable"
        )
    return paths[0]


def _fetched(
    entry: ModelFile, file: PinnedFile, home: Path | None, mirror: Path | None, url: str | None
) -> Path:
    """One file of `entry`: the mirror's (copied into the cache), the cache's, or downloaded."""
    cached = cache_path(file, home)
    if mirror is not None:
        candidate = mirror / file.filename
        if _verified(candidate, file, entry.name):
            return _copied(candidate, cached, file)
    if _verified(cached, file, entry.name):
        return cached
    source = url or file.url
    try:
        return download(source, cached, file.sha256)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ModelFileError(
            f"could not download {entry.name} from {source}: {exc}. Without internet, copy "
            f"{file.filename} (sha256 {file.sha256}) into {cached.parent} or into a folder named by "
            "FACEDET_MODEL_DIR, or pass --model PATH"
        ) from None


def _copied(source: Path, dest: Path, entry: PinnedFile) -> Path:
    """`dest` as a verified copy of the verified `source` (made atomically, replacing a bad
    one), or `source` itself where `dest` cannot be written (a read-only home)."""
    if dest.is_file() and sha256_of(dest) == entry.sha256:
        return dest
    try:
        return download(source.resolve().as_uri(), dest, entry.sha256)
    except OSError:
        return source


def exported_path(source: Path, sha256: str, home: Path | None = None) -> Path:
    """Where `facedet models pull --export` keeps our dynamic-shape export of an upstream file."""
    return (home or facedet_home()) / "models" / "exported" / f"{Path(source).stem}-{sha256[:16]}.onnx"


def resolve_model(model: str | None, home: Path | None = None) -> Path:
    """--model / FACEDET_MODEL: a path to a file, or a registry name to pull; default yolov5n-0.5.

    A file path is served as it is. An ncnn model (yolov5n-face) is its pulled .param: the torch
    runtime reads it, and the app converts it for ONNX Runtime (the converter sits above this
    layer). An ONNX registry model is served in the fastest form at hand: our
    export of it (decoding in the graph) once `facedet models pull NAME --export` has made it,
    else the upstream file made dynamic (any batch, the rectangular letterbox) with the onnx
    package, made once into the cache; the frozen file only where neither can be had, with the
    reason logged."""
    value = model or os.environ.get("FACEDET_MODEL") or DEFAULT_MODEL
    if value in REGISTRY:
        source = pull(value, home=home, cache_mirror=False)  # serving leaves the cache as it is
        if REGISTRY[value].format == "ncnn":
            return source
        sha = REGISTRY[value].sha256
        exported = exported_path(source, sha, home)
        return exported if exported.is_file() else dynamic_model(source, sha, home)
    path = Path(value).expanduser()
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist (known names: {', '.join(sorted(REGISTRY))})")
    return path


def dynamic_path(source: Path, sha256: str, home: Path | None = None) -> Path:
    return (home or facedet_home()) / "models" / "dynamic" / f"{source.stem}-{sha256[:12]}-dynamic.onnx"


def dynamic_model(source: Path, sha256: str, home: Path | None = None) -> Path:
    """The dynamic rewrite of a frozen upstream file (see `dynamic_upstream`), made on first
    use; `source` itself where the rewrite is unavailable, saying why."""
    from facedet_server.model.spec import BUILTIN_SPECS

    spec = BUILTIN_SPECS.get(sha256)
    if spec is None:
        return source
    target = dynamic_path(source, sha256, home)
    try:
        from facedet_server.model import dynamic_upstream

        if not dynamic_upstream.is_current(target, sha256):
            dynamic_upstream.make_dynamic(source, target, spec)
            log.info("model_made_dynamic", source=str(source), path=str(target))
    except ImportError as exc:
        log.warning(
            "model_fixed_shape",
            reason=f"the onnx package is missing ({exc.name}), so {source.name} runs at batch 1, "
            f"{spec.input_width}x{spec.input_height}: pip install onnx",
        )
        return source
    except (OSError, ValueError) as exc:  # a read-only cache, or a graph the rewrite refuses
        log.warning("model_fixed_shape", reason=f"{source.name} could not be made dynamic: {exc}")
        return source
    return target
