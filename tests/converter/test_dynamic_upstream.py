"""The upstream file made dynamic with the onnx package alone (facedet_server.model.dynamic_upstream):
identical raw heads to the frozen file at 640x640, any batch and multiple-of-32 size, the same
raw heads as our PyTorch network at those sizes, and the same faces as our own export on the
sample photos at the rectangular input the server uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from converter_testdata import IMAGES, SAMPLE_IMAGES, TOLERANCE, raw_heads  # noqa: E402
from facedet_server.faces.heads import decode_heads  # noqa: E402
from facedet_server.faces.options import Options  # noqa: E402
from facedet_server.faces.select import select_faces  # noqa: E402
from facedet_server.image.decode import decode_encoded  # noqa: E402
from facedet_server.model.dynamic_upstream import RewriteError, make_dynamic, rewrite  # noqa: E402
from facedet_server.model.spec import UPSTREAM_YOLOV5N_05, ModelSpec  # noqa: E402
from facedet_server.tensor.letterbox import input_shape_for, letterbox, to_tensor  # noqa: E402

OUTPUTS = ["stride_8", "stride_16", "stride_32"]


@pytest.fixture(scope="module")
def dynamic(upstream_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelSpec]:
    path = tmp_path_factory.mktemp("dynamic") / "yolov5n-0.5-dynamic.onnx"
    return path, make_dynamic(upstream_onnx, path)


@pytest.fixture(scope="module")
def dynamic_session(dynamic: tuple[Path, ModelSpec]) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(dynamic[0]), providers=["CPUExecutionProvider"])


def test_spec_is_dynamic_and_recorded_in_the_file(dynamic: tuple[Path, ModelSpec]) -> None:
    from facedet_server.model.onnx_metadata import read_spec

    path, spec = dynamic
    assert spec.dynamic_shape and spec.dynamic_batch
    assert spec.output_kind == "raw_heads" and spec.output_names == UPSTREAM_YOLOV5N_05.output_names
    assert read_spec(path) == spec


def test_same_raw_heads_as_the_frozen_file_at_its_size(upstream_session: Any, dynamic_session: Any) -> None:
    images = np.random.default_rng(3).random((1, 3, 640, 640), dtype=np.float32)
    theirs_all = upstream_session.run(OUTPUTS, {"data": images})
    for theirs, ours in zip(theirs_all, dynamic_session.run(OUTPUTS, {"data": images}), strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(("n", "h", "w"), [(3, 384, 640), (2, 640, 480), (1, 96, 160)])
def test_any_batch_and_size_matches_our_network(
    imported: Any, dynamic_session: Any, n: int, h: int, w: int
) -> None:
    images = np.random.default_rng(h).random((n, 3, h, w), dtype=np.float32)
    ours = dynamic_session.run(OUTPUTS, {"data": images})
    for head, reference, stride in zip(ours, raw_heads(imported, images), (8, 16, 32), strict=True):
        assert head.shape == (n, 3, h // stride, w // stride, 16)
        assert float(np.abs(head - reference).max()) <= TOLERANCE
    # Images of one batch do not see each other.
    alone = dynamic_session.run(OUTPUTS, {"data": images[-1:]})
    for head, single in zip(ours, alone, strict=True):
        np.testing.assert_allclose(head[-1:], single, atol=1e-5)


def _faces(session: Any, spec: ModelSpec, name: str) -> np.ndarray:
    image = decode_encoded((IMAGES / name).read_bytes(), 100_000_000, target=(640, 640))
    w, h = input_shape_for(image.width, image.height, None, 640, 32)
    canvas, transform = letterbox(image.pixels, w, h, source_scale=(image.scale_x, image.scale_y))
    tensor = np.empty((1, 3, h, w), np.float32)
    to_tensor(canvas, tensor[0])
    outputs = session.run(list(spec.output_names), {spec.input_name: tensor})
    (candidates,) = decode_heads(outputs, spec)
    return select_faces(candidates, Options(0.5, 0.5, 1000, 0.0), transform, image.width, image.height)


@pytest.mark.parametrize("name", SAMPLE_IMAGES)
def test_same_faces_as_our_export(
    name: str, dynamic: tuple[Path, ModelSpec], dynamic_session: Any, exported: Path
) -> None:
    import onnxruntime as ort
    from facedet_server.model.onnx_metadata import read_spec

    export_spec = read_spec(exported)
    assert export_spec is not None
    ours = _faces(dynamic_session, dynamic[1], name)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    theirs = _faces(session, export_spec, name)
    assert len(ours) == len(theirs) > 0
    np.testing.assert_allclose(ours, theirs, atol=0.05)


def test_a_graph_of_another_layout_is_refused(exported: Path) -> None:
    with pytest.raises(RewriteError, match="not the upstream"):
        rewrite(onnx.load(str(exported)))
