"""Weight import from the upstream ONNX export: our model reproduces upstream's raw heads
(acceptance: max |diff| <= 1e-4 in float32) on random inputs and on the sample images, and a
structural mismatch is reported by the first layer that disagrees."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from converter_testdata import TOLERANCE, raw_heads  # noqa: E402
from facedet_nn.configs import get_config  # noqa: E402
from facedet_nn.model import DecodedYoloFace  # noqa: E402
from facedet_nn.onnx_weights import WeightImportError, import_onnx  # noqa: E402
from facedet_server.faces.heads import decode_heads  # noqa: E402
from facedet_server.model.spec import UPSTREAM_YOLOV5N_05, ModelSpec  # noqa: E402

OUTPUTS = ["stride_8", "stride_16", "stride_32"]


def test_config_is_recognised(imported: Any) -> None:
    assert imported.config.name == "yolov5n-0.5"
    assert imported.fused
    assert imported.strides == (8, 16, 32)
    assert imported.anchors == UPSTREAM_YOLOV5N_05.anchors


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_raw_heads_match_upstream_on_random_inputs(imported: Any, upstream_session: Any, seed: int) -> None:
    images = np.random.default_rng(seed).random((1, 3, 640, 640), dtype=np.float32)
    theirs = upstream_session.run(OUTPUTS, {"data": images})
    ours = raw_heads(imported, images)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        assert float(np.abs(a - b).max()) <= TOLERANCE


def test_raw_heads_match_upstream_on_sample_images(
    imported: Any, upstream_session: Any, letterboxed_samples: list[tuple[str, np.ndarray]]
) -> None:
    worst = {}
    for name, images in letterboxed_samples:
        theirs = upstream_session.run(OUTPUTS, {"data": images})
        ours = raw_heads(imported, images)
        worst[name] = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))
    assert max(worst.values()) <= TOLERANCE, worst


def test_float64_model_matches_upstream_within_upstreams_rounding(
    imported: Any, upstream_session: Any, letterboxed_samples: list[tuple[str, np.ndarray]]
) -> None:
    # The same float32 weights evaluated exactly (float64): what remains is ONNX Runtime's rounding.
    exact = copy.deepcopy(imported).double()
    name, images = letterboxed_samples[0]
    theirs = upstream_session.run(OUTPUTS, {"data": images})
    with torch.no_grad():
        ours = [h.numpy() for h in exact(torch.from_numpy(images).double())]
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True)) <= TOLERANCE, name


def test_decoded_candidates_match_the_servers_decoding_of_upstream(
    imported: Any, upstream_session: Any, letterboxed_samples: list[tuple[str, np.ndarray]]
) -> None:
    decoded = DecodedYoloFace(imported).eval()
    spec = ModelSpec(
        name="ours",
        strides=imported.strides,
        anchors=imported.anchors,
        input_name="images",
        output_names=("candidates",),
        output_kind="decoded",
    )
    for _, images in letterboxed_samples[:2]:
        expected = decode_heads(upstream_session.run(OUTPUTS, {"data": images}), UPSTREAM_YOLOV5N_05)
        with torch.no_grad():
            rows = decoded(torch.from_numpy(images)).numpy()
        actual = decode_heads([rows], spec)
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-3)
        # The confident candidates (the ones that become faces) agree closely.
        confident = expected[..., 4] > 0.5
        assert confident.any()
        assert float(np.abs(actual[confident] - expected[confident]).max()) < 1e-3


def test_wrong_config_names_the_first_mismatching_layer(upstream_onnx: Path) -> None:
    with pytest.raises(WeightImportError) as info:
        import_onnx(upstream_onnx, get_config("yolov5n"))
    message = str(info.value)
    assert "layer model.0.stem_1.conv" in message and "Conv" in message
    assert "3->16" in message and "3->32" in message


def test_tampered_graph_is_refused_by_layer(upstream_onnx: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(upstream_onnx))
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    target = convs[4]  # the strided depthwise conv of the first ShuffleV2 block
    for attr in target.attribute:
        if attr.name == "strides":
            attr.ints[:] = [1, 1]
    path = tmp_path / "tampered.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(WeightImportError) as info:
        import_onnx(path, get_config("yolov5n-0.5"))
    message = str(info.value)
    assert "conv #4" in message and target.name in message and "model.1.branch1.0.conv" in message


def test_misplaced_weight_name_is_caught(upstream_onnx: Path, tmp_path: Path) -> None:
    # Same shapes, but the initializer says it belongs to another layer: the order is off.
    proto = onnx.load(str(upstream_onnx))
    renames = {"model.7.conv.weight": "model.11.conv.weight", "model.11.conv.weight": "model.7.conv.weight"}
    for init in proto.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
    path = tmp_path / "renamed.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(WeightImportError, match=r"layer model\.7\.conv .*model\.11\.conv\.weight"):
        import_onnx(path)


def test_not_a_yolov5_face_graph(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(WeightImportError, match="no Conv nodes"):
        import_onnx(path)


def test_torch_backend_entry_point(upstream_onnx: Path, imported: Any) -> None:
    from facedet_server.runtime.torch_model import load_inference_model

    module, spec = load_inference_model(upstream_onnx)
    assert isinstance(module, DecodedYoloFace) and not module.training
    assert (spec.name, spec.output_kind, spec.input_name, spec.output_names) == (
        "yolov5n-0.5",
        "decoded",
        "images",
        ("candidates",),
    )
    assert (spec.source, spec.source_sha256) == (
        UPSTREAM_YOLOV5N_05.source,
        UPSTREAM_YOLOV5N_05.source_sha256,
    )
    images = torch.rand(2, 3, 224, 320)
    with torch.no_grad():
        assert torch.equal(module(images), DecodedYoloFace(imported)(images))
