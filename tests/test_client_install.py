"""The client-only distribution (clients/python/pyproject.toml, `facedet-client`): installed by
pip into a fresh virtual environment, without NumPy, OpenCV or ONNX Runtime, it talks to a real
server, and what needs OpenCV says so instead of failing with a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from facedet_test_support import REPO, SHARED, ServerFactory

ZIDANE = SHARED / "images" / "zidane.jpg"
VIDEO = SHARED / "videos" / "one_face_640x480.mkv"

# A fresh venv and a real pip install (grpcio, protobuf from the package index) take ~20 s
# here: within make test's budget, so not marked slow.


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv with `pip install clients/python` (copied first: a build writes
    build/ and *.egg-info beside the sources)."""
    root = tmp_path_factory.mktemp("client-install")
    sources = root / "src"
    shutil.copytree(REPO / "clients" / "python", sources, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    bin_dir = root / "venv" / "bin"
    installed = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", str(sources)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return bin_dir


def run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, timeout=120, check=False
    )


def test_only_the_client_and_its_three_dependencies_are_installed(client_venv: Path) -> None:
    probe = (
        "import importlib.util, facedet.client, facedet.v1, facedet.cli\n"
        "for name in ('numpy', 'cv2', 'onnxruntime', 'simplejpeg', 'facedet_server'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
    )
    done = run(client_venv, "python", "-c", probe)
    assert done.returncode == 0, done.stderr
    helped = run(client_venv, "facedet", "--help")
    assert helped.returncode == 0
    assert "detect" in helped.stdout and "stream" in helped.stdout and "serve " not in helped.stdout


def test_the_client_alone_against_a_real_server(
    client_venv: Path, module_server_factory: ServerFactory, tmp_path: Path
) -> None:
    target = module_server_factory("--summary-interval", "0", "--log-level", "warning").target
    done = run(client_venv, "facedet", "detect", str(ZIDANE), "--server", target)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{ZIDANE}: 2 faces in 1280x720")

    library = (
        "import sys\nfrom facedet.client import FaceDetectorClient\n"
        "with FaceDetectorClient(sys.argv[1], timeout=30) as c:\n"
        "    print(len(c.detect(sys.argv[2]).faces), len(c.detect(open(sys.argv[2], 'rb').read()).faces))\n"
    )
    done = run(client_venv, "python", "-c", library, target, str(ZIDANE))
    assert done.returncode == 0 and done.stdout.split() == ["2", "2"], done.stderr

    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(ZIDANE, folder / "a.jpg")
    done = run(client_venv, "facedet", "stream", str(folder), "--server", target)
    assert done.returncode == 0 and done.stdout.startswith("frame 0: 2 faces"), done.stderr

    # What needs OpenCV says so, with the way to get it, and no traceback.
    bmp = tmp_path / "zidane.bmp"
    pixels = cv2.imread(str(ZIDANE))
    assert pixels is not None and cv2.imwrite(str(bmp), pixels)
    needs_opencv = "needs OpenCV: pip install opencv-python-headless"
    for args, code in (
        (["detect", str(bmp)], 1),
        (["detect", str(ZIDANE), "--draw", str(tmp_path / "out.png")], 1),
        (["stream", str(VIDEO)], 1),
    ):
        done = run(client_venv, "facedet", *args, "--server", target)
        assert done.returncode == code, (args, done.stderr)
        assert "OpenCV" in done.stderr and "pip install opencv-python-headless" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    done = run(client_venv, "facedet", "detect", str(bmp), "--server", target)
    assert (
        f"INVALID_ARGUMENT: {bmp}: sending a BMP file (the server takes JPEG or PNG) {needs_opencv}"
        in done.stderr
    )
