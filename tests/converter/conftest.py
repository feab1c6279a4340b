"""Fixtures for the converter tests: the shared upstream model and images, our model with the
upstream weights, and one export of it shared by every test (an export takes half a minute)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from converter_testdata import IMAGES, SAMPLE_IMAGES, SHARED, UPSTREAM_ONNX


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(
            f"{path} not found; put the shared data folder beside the checkout (../shared) or set "
            "FACEDET_SHARED / FACEDET_TEST_MODEL",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def upstream_onnx() -> Path:
    return require(UPSTREAM_ONNX)


@pytest.fixture(scope="session")
def ncnn_yolov5n_face() -> Path:
    """The yolov5n-face ncnn graph (`yolov5n.param`, its `.bin` beside it) from the shared data."""
    param = Path(SHARED) / "models" / "ncnn" / "yolov5n.param"
    if not (param.is_file() and param.with_suffix(".bin").is_file()):
        pytest.skip(f"{param} and its .bin not found; set FACEDET_SHARED to the shared data folder")
    return param


@pytest.fixture(scope="session")
def upstream_session(upstream_onnx: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(upstream_onnx), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def letterboxed_samples() -> list[tuple[str, np.ndarray]]:
    """The shared sample images as the server feeds them to a 640x640 model: (1, 3, 640, 640)."""
    from facedet_server.image.decode import decode_encoded
    from facedet_server.tensor.letterbox import letterbox, to_tensor

    out = []
    for name in SAMPLE_IMAGES:
        image = decode_encoded(require(IMAGES / name).read_bytes(), 100_000_000, target=(640, 640))
        canvas, _ = letterbox(image.pixels, 640, 640)
        tensor = np.empty((1, 3, 640, 640), np.float32)
        to_tensor(canvas, tensor[0])
        out.append((name, tensor))
    return out


@pytest.fixture(scope="session")
def imported(upstream_onnx: Path) -> Any:
    pytest.importorskip("torch")
    from facedet_nn.onnx_weights import import_onnx

    return import_onnx(upstream_onnx)


@pytest.fixture(scope="session")
def facedet_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("facedet-home")


@pytest.fixture(scope="session")
def exported(upstream_onnx: Path, facedet_home: Path) -> Iterator[Path]:
    """Our export of the upstream weights, made the way `facedet models pull --export` makes it."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from facedet_converter.cache import exported_model

    yield exported_model(upstream_onnx, home=facedet_home)
