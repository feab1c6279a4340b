"""EXIF orientation on the GPU decode path: nvJPEG decodes the stored pixels and the pipeline
turns them upright on the GPU, so a photo stored in each of the eight orientations gives the
faces of the upright photo, as on the CPU path (tests/test_exif_orientation.py)."""

from __future__ import annotations

import numpy as np
import pytest
from facedet_test_support import cuda_torch

torch = cuda_torch("the GPU decode path needs PyTorch")

from exif_photos import stored_jpeg  # noqa: E402
from facedet_server.app.config import ServerConfig  # noqa: E402
from facedet_server.app.server import limits_for  # noqa: E402
from facedet_server.faces.options import Options  # noqa: E402
from facedet_server.image.inputs import EncodedImage  # noqa: E402
from facedet_server.pipeline.gpu import GpuPipeline  # noqa: E402
from facedet_server.runtime.torch_cuda import TorchCudaBackend  # noqa: E402
from facedet_test_support import image_bytes  # noqa: E402

TOLERANCE_PX = 4.0


@pytest.fixture(scope="module")
def pipeline(torch_backend: TorchCudaBackend) -> GpuPipeline:
    gpu = GpuPipeline(torch_backend, limits_for(ServerConfig()), gpu_decode="on")
    assert gpu.jpeg is not None, "nvJPEG must decode here, or this test checks the CPU fallback"
    return gpu


def corners(faces: np.ndarray) -> np.ndarray:
    return np.asarray(sorted(faces[:, [0, 1, 2, 3, *range(5, 15)]].tolist()), np.float64)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_turned_on_the_gpu_like_the_upright_photo(pipeline: GpuPipeline, orientation: int) -> None:
    upright = image_bytes("zidane.jpg")
    reference = pipeline.detect(EncodedImage(stored_jpeg(upright, 1)), Options())
    prepared = pipeline.preparer.prepare(EncodedImage(stored_jpeg(upright, orientation)), Options())
    assert prepared.jpeg is not None and prepared.orientation == orientation  # nvJPEG's to decode
    (turned,) = pipeline.infer_batch([prepared])
    assert not isinstance(turned, Exception), turned
    assert (turned.width, turned.height) == (reference.width, reference.height) == (1280, 720)
    ours, theirs = corners(turned.faces), corners(reference.faces)
    assert ours.shape == theirs.shape and len(ours) > 0
    assert float(np.abs(ours - theirs).max()) <= TOLERANCE_PX


def test_ignored_keeps_the_stored_size(pipeline: GpuPipeline) -> None:
    data = stored_jpeg(image_bytes("zidane.jpg"), 6)
    result = pipeline.detect(EncodedImage(data), Options(exif_orientation=False))
    assert (result.width, result.height) == (720, 1280)
