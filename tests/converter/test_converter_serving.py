"""The server on our exported model, end to end: once `facedet models pull --export` has made the
export, `facedet serve` (default model name) runs it with real batching and the rectangular
letterbox, and finds the same faces as the frozen upstream file with its square letterbox."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from facedet.v1 import face_detector_pb2 as pb
from facedet_server.model.spec import UPSTREAM_YOLOV5N_05_SHA256
from facedet_test_support import EXPECTED_FACES, MODEL, ServerFactory, image_bytes


def _iou(a: pb.BoundingBox, b: pb.BoundingBox) -> float:
    ix = max(0.0, min(a.x_max, b.x_max) - max(a.x_min, b.x_min))
    iy = max(0.0, min(a.y_max, b.y_max) - max(a.y_min, b.y_min))
    inter = ix * iy
    area = (a.x_max - a.x_min) * (a.y_max - a.y_min) + (b.x_max - b.x_min) * (b.y_max - b.y_min)
    return inter / (area - inter) if area > inter else 0.0


def test_server_prefers_the_export_and_matches_the_square_letterbox(
    exported: Path, facedet_home: Path, start_server: ServerFactory
) -> None:
    env = {"FACEDET_HOME": str(facedet_home), "FACEDET_MODEL_DIR": str(MODEL.parent)}
    ours = start_server("--max-batch", "8", "--max-delay-ms", "20", model="yolov5n-0.5", env=env, unix=False)
    upstream = start_server(model=MODEL, unix=False)
    with ours.stub() as stub, upstream.stub() as reference:
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        assert info.model_sha256 != UPSTREAM_YOLOV5N_05_SHA256, "the server did not pick the export"
        assert info.name == "yolov5n-0.5" and info.max_batch == 8
        for name, count in EXPECTED_FACES.items():
            request = pb.DetectFacesRequest(encoded=image_bytes(name))
            got, ref = stub.DetectFaces(request), reference.DetectFaces(request)
            assert len(got.faces) == len(ref.faces) == count, name
            for face in ref.faces:
                assert max(_iou(face.box, other.box) for other in got.faces) >= 0.9, name
        # A dynamic batch axis: concurrent requests share model runs.
        request = pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg"))
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: stub.DetectFaces(request), range(48)))
    assert all(len(r.faces) == 2 for r in responses)
    assert max(r.timing.batch_size for r in responses) > 1


def test_rectangular_input_has_fewer_pixels(exported: Path) -> None:
    """16:9 frames run at 640x384 on the export: 40% fewer pixels than the square 640x640."""
    from facedet_server.app.config import ServerConfig
    from facedet_server.app.server import limits_for
    from facedet_server.faces.options import Options
    from facedet_server.image.inputs import EncodedImage
    from facedet_server.pipeline.host import HostPipeline
    from facedet_server.runtime.onnxruntime import OnnxRuntimeBackend

    detector = HostPipeline(OnnxRuntimeBackend(exported, intra_op_threads=1), limits_for(ServerConfig()))
    prepared = detector.prepare(EncodedImage(image_bytes("zidane.jpg")), Options())
    assert prepared.canvas.shape == (384, 640, 3)
    assert np.isclose(1 - 384 * 640 / (640 * 640), 0.4)


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
