"""yolov5n-face, a registry model of two ncnn files: pulled from the mirror (both sha256-checked),
then `facedet serve --model yolov5n-face` on the CPU converts it once to our ONNX (torch is in the
dev venv) and finds the faces our PyTorch model of it finds (tests/converter/test_converter_ncnn.py
holds that model to ncnn's own output). Without torch, the start fails in one line."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_server.app.config import ServerConfig
from facedet_server.model import files as modelfiles
from facedet_server.model.files import REGISTRY, ModelFileError, exported_path, pull
from facedet_test_support import (
    CHANNEL_OPTIONS,
    EXPECTED_FACES,
    REPO,
    SHARED,
    Server,
    clean_env,
    image_bytes,
    run_cli,
)

NAME = "yolov5n-face"
ENTRY = REGISTRY[NAME]
MIRROR = SHARED / "models"
BOX_TOLERANCE_PX = 0.5  # ONNX Runtime against PyTorch, float32 both; measured far below


def _require_mirror() -> None:
    for file in ENTRY.files:
        if not (MIRROR / file.filename).is_file():
            pytest.skip(f"{MIRROR / file.filename} not found; set FACEDET_SHARED to the shared data folder")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _require_mirror()
    monkeypatch.delenv("FACEDET_MODEL_DIR", raising=False)
    monkeypatch.delenv("FACEDET_MODEL", raising=False)
    monkeypatch.setenv("FACEDET_HOME", str(tmp_path / "home"))


def test_pull_from_the_mirror_copies_both_files_checked(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = pull(NAME, home=home, mirror=MIRROR)
    assert path == home / "models" / "ncnn" / "yolov5n.param" == modelfiles.cache_path(ENTRY, home)
    for file in ENTRY.files:
        copy = home / "models" / file.filename
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == file.sha256
    assert path.with_suffix(".bin").is_file()  # beside the .param, where the loaders look
    # Served without copying: the mirror's pair as it is.
    assert pull(NAME, home=tmp_path / "other", mirror=MIRROR, cache_mirror=False) == MIRROR / ENTRY.filename


def test_a_corrupt_mirror_copy_is_refused(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    for file in ENTRY.files:
        (mirror / file.filename).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(MIRROR / file.filename, mirror / file.filename)
    weights = mirror / "ncnn" / "yolov5n.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as info:
        pull(NAME, home=tmp_path / "home", mirror=mirror)
    message = str(info.value)
    assert str(weights) in message and ENTRY.companions[0].sha256 in message, message
    assert not (tmp_path / "home" / "models" / "ncnn" / "yolov5n.bin").exists()


def test_one_url_for_two_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="FACEDET_MODEL_DIR"):
        pull(NAME, home=tmp_path / "home", url="http://127.0.0.1:9/yolov5n.param")


def test_models_list_shows_it(tmp_path: Path) -> None:
    result = run_cli("models", "list", env={"FACEDET_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(NAME + "\t")]
    assert line.split("\t")[1:3] == [ENTRY.filename, "not cached"]


# --- serving, one converted cache for the module ------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FACEDET_HOME where `facedet models pull yolov5n-face` put the model (from the mirror)."""
    _require_mirror()
    home = tmp_path_factory.mktemp("face-home")
    result = run_cli(
        "models", "pull", NAME, env={"FACEDET_HOME": str(home), "FACEDET_MODEL_DIR": str(MIRROR)}
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == home / "models" / ENTRY.filename
    return home


def _export(home: Path) -> Path:
    param = home / "models" / ENTRY.filename
    return exported_path(param, ENTRY.weights_sha256, home)


@pytest.fixture(scope="module")
def first_start(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`facedet serve --model yolov5n-face` with only the pulled cache (no mirror): converts."""
    assert not _export(home).exists()
    server = Server(
        tmp_path_factory.mktemp("face-logs"), model=NAME, env={"FACEDET_HOME": str(home)}, unix=False
    )
    with server.start(timeout=240):  # the one-time conversion takes ~20 s, more on a busy machine
        yield server


def test_first_start_converts_once_into_the_cache(first_start: Server, home: Path) -> None:
    (converted,) = [r for r in first_start.log_records() if r.get("event") == "model_converted"]
    assert converted["model"] == NAME and Path(converted["path"]) == _export(home)
    from facedet_server.model.onnx_metadata import read_spec

    spec = read_spec(_export(home))
    assert spec is not None and (spec.name, spec.source_sha256) == (NAME, ENTRY.weights_sha256)
    assert spec.dynamic_shape and spec.dynamic_batch


def test_model_info_names_it(first_start: Server) -> None:
    with grpc.insecure_channel(first_start.target, options=CHANNEL_OPTIONS) as channel:
        info = pb_grpc.FaceDetectorStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.name == NAME
    assert info.backend == "onnxruntime"


def _reference_faces(param: Path, data: bytes) -> np.ndarray:
    """What our PyTorch model of the ncnn files finds, through the server's own pre- and
    post-processing at the server's default options."""
    torch = pytest.importorskip("torch")
    from facedet_server.faces.heads import decode_heads
    from facedet_server.faces.options import Options
    from facedet_server.faces.select import select_faces
    from facedet_server.image.decode import decode_encoded
    from facedet_server.runtime.torch_model import load_inference_model
    from facedet_server.tensor.letterbox import input_shape_for, letterbox, to_tensor

    module, spec = load_inference_model(param)
    image = decode_encoded(data, 100_000_000, target=(640, 640))
    w, h = input_shape_for(image.width, image.height, None, 640, 32)
    canvas, transform = letterbox(image.pixels, w, h, source_scale=(image.scale_x, image.scale_y))
    tensor = np.empty((1, 3, h, w), np.float32)
    to_tensor(canvas, tensor[0])
    with torch.no_grad():
        (candidates,) = decode_heads([module(torch.from_numpy(tensor)).numpy()], spec)
    config = ServerConfig()
    options = Options(config.min_confidence, config.iou_threshold, config.max_faces, 0.0)
    return select_faces(candidates, options, transform, image.width, image.height)


@pytest.mark.parametrize("photo", sorted(EXPECTED_FACES))
def test_finds_the_faces_of_our_pytorch_model(first_start: Server, home: Path, photo: str) -> None:
    data = image_bytes(photo)
    expected = _reference_faces(home / "models" / ENTRY.filename, data)
    assert len(expected) > 0, photo
    with grpc.insecure_channel(first_start.target, options=CHANNEL_OPTIONS) as channel:
        response = pb_grpc.FaceDetectorStub(channel).DetectFaces(
            pb.DetectFacesRequest(encoded=data), timeout=30
        )
    boxes = np.array([[f.box.x_min, f.box.y_min, f.box.x_max, f.box.y_max] for f in response.faces])
    assert boxes.shape == (len(expected), 4), photo
    np.testing.assert_allclose(boxes, expected[:, :4], atol=BOX_TOLERANCE_PX)


def test_a_second_start_reuses_the_export(first_start: Server, home: Path, tmp_path: Path) -> None:
    made = _export(home).stat().st_mtime_ns
    server = Server(tmp_path, model=NAME, env={"FACEDET_HOME": str(home)}, unix=False, name="second")
    with server.start():
        with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            info = pb_grpc.FaceDetectorStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.name == NAME
        records = server.log_records()
    assert not [r for r in records if r.get("event") in ("model_converting", "model_converted")]
    assert _export(home).stat().st_mtime_ns == made


def test_pull_export_gives_the_same_conversion(first_start: Server, home: Path) -> None:
    result = run_cli("models", "pull", NAME, "--export", env={"FACEDET_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(home / "models" / ENTRY.filename), str(_export(home))]


def test_without_torch_the_start_fails_in_one_line(home: Path, tmp_path: Path) -> None:
    """A fresh home (nothing converted) and torch made unimportable, as where it is not installed."""
    fresh = tmp_path / "fresh"
    shutil.copytree(home / "models" / "ncnn", fresh / "models" / "ncnn")
    hide_torch = "import sys; sys.modules['torch'] = None; from facedet.cli import main; sys.exit(main())"
    command = [sys.executable, "-c", hide_torch, "serve", "--model", NAME, "--listen", "127.0.0.1:0"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=clean_env({"FACEDET_HOME": str(fresh)}),
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"facedet serve: {NAME} on the CPU needs a one-time conversion"), last
    assert "pip install torch" in last and "pip install -e '.[convert]'" in last and "--model" in last, last
