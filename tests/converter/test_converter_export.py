"""The exported ONNX: valid, dynamic in batch, height and width, equal to the PyTorch model in
ONNX Runtime, carrying its ModelSpec, and served by the CPU server as it is."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

import onnxruntime as ort  # noqa: E402
from converter_testdata import TINY_LAYERS  # noqa: E402
from converter_upstream_format import write_checkpoint  # noqa: E402
from facedet_converter import __version__  # noqa: E402
from facedet_converter.cache import exported_model, is_current  # noqa: E402
from facedet_converter.export import check_onnx, read_spec  # noqa: E402
from facedet_nn.configs import ModelConfig  # noqa: E402
from facedet_nn.model import DecodedYoloFace, YoloFace  # noqa: E402
from facedet_server.faces.heads import decode_heads  # noqa: E402
from facedet_server.model.files import exported_path  # noqa: E402
from facedet_server.model.network import INPUT_NAME, OUTPUT_NAME  # noqa: E402
from facedet_server.model.spec import (  # noqa: E402
    UPSTREAM_YOLOV5N_05,
    UPSTREAM_YOLOV5N_05_SHA256,
    ModelSpec,
    resolve_spec,
)
from facedet_server.runtime.torch_model import load_network as load_weights  # noqa: E402


def test_export_is_valid_onnx_with_dynamic_axes(exported: Path) -> None:
    onnx.checker.check_model(str(exported), full_check=True)
    proto = onnx.load(str(exported))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (graph_input,) = proto.graph.input
    (graph_output,) = proto.graph.output
    assert graph_input.name == INPUT_NAME and graph_output.name == OUTPUT_NAME

    def dims(value: Any) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert dims(graph_input) == ["batch", 3, "height", "width"]
    assert dims(graph_output) == ["batch", "candidates", 15]
    # Nothing of the example input's shape may be baked in (the upstream file's problem).
    constants = [n for n in proto.graph.node if n.op_type == "Reshape"]
    for node in constants:
        for init in proto.graph.initializer:
            if init.name in node.input and 640 in onnx.numpy_helper.to_array(init).tolist():
                pytest.fail(f"Reshape {node.name} has a constant 640 in its shape")


@pytest.mark.parametrize(
    "shape",
    [
        (1, 3, 640, 640),
        (2, 3, 384, 640),
        (3, 3, 224, 320),
        (1, 3, 32, 32),
        (5, 3, 96, 64),
        (1, 3, 1920, 1088),
    ],
)
def test_export_matches_pytorch_at_any_batch_and_shape(
    exported: Path, imported: Any, shape: tuple[int, ...]
) -> None:
    (result,) = check_onnx(exported, imported, [shape])  # type: ignore[list-item]
    assert result.shape == shape


def test_export_output_equals_the_servers_decoding_of_upstream(
    exported: Path, upstream_session: Any, letterboxed_samples: list[tuple[str, np.ndarray]]
) -> None:
    ours = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    spec = read_spec(exported)
    assert spec is not None
    for _, images in letterboxed_samples[:3]:
        expected = decode_heads(upstream_session.run(None, {"data": images}), UPSTREAM_YOLOV5N_05)
        actual = decode_heads(ours.run([OUTPUT_NAME], {INPUT_NAME: images}), spec)
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-3)


def test_metadata_round_trip(exported: Path, upstream_onnx: Path) -> None:
    proto = onnx.load(str(exported))
    props = {p.key: p.value for p in proto.metadata_props}
    spec = ModelSpec.from_metadata(props)
    assert spec is not None
    assert spec == resolve_spec(props, "unknown", INPUT_NAME, [OUTPUT_NAME])
    assert spec.name == "yolov5n-0.5"
    assert spec.strides == (8, 16, 32) and spec.anchors == UPSTREAM_YOLOV5N_05.anchors
    assert (spec.input_name, spec.output_names, spec.output_kind) == (INPUT_NAME, (OUTPUT_NAME,), "decoded")
    assert (spec.batch_size, spec.input_height, spec.input_width) == (None, None, None)
    assert (spec.color_order, spec.scale, spec.pad_value, spec.size_multiple) == ("RGB", 1 / 255, 114, 32)
    assert spec.source_sha256 == UPSTREAM_YOLOV5N_05_SHA256
    assert spec.source == UPSTREAM_YOLOV5N_05.source
    assert spec.extra["converter"] == f"facedet_converter {__version__}"
    assert int(spec.extra["onnx_opset"]) >= 17
    assert spec.extra["precision"] == "fp32"
    assert "[cx, cy, w, h, score" in spec.extra["output_layout"]
    assert ModelConfig.from_dict(json.loads(spec.extra["config"]), spec.name).name == "yolov5n-0.5"
    # The spec survives a write/read through JSON unchanged (what the server relies on).
    assert ModelSpec.from_metadata(spec.to_metadata()) == spec


def test_cpu_server_backend_serves_the_export(exported: Path) -> None:
    from facedet_server.runtime.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(exported, intra_op_threads=1)
    assert backend.spec.dynamic_batch and backend.spec.dynamic_shape
    batch = np.random.default_rng(0).random((3, 3, 384, 640), dtype=np.float32)
    (rows,) = backend.run(batch)
    assert rows.shape == (3, 3 * (48 * 80 + 24 * 40 + 12 * 20), 15)
    backend.close()


def test_export_round_trips_into_our_model(exported: Path, imported: Any) -> None:
    again = load_weights(exported)
    assert again.config == imported.config
    for (name, a), (_, b) in zip(imported.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_pull_export_is_cached(exported: Path, upstream_onnx: Path, facedet_home: Path) -> None:
    assert exported == exported_path(upstream_onnx, UPSTREAM_YOLOV5N_05_SHA256, facedet_home)
    assert is_current(exported, UPSTREAM_YOLOV5N_05_SHA256)
    assert not is_current(upstream_onnx, UPSTREAM_YOLOV5N_05_SHA256)  # no metadata: would be re-made
    stamp = exported.stat().st_mtime_ns
    assert exported_model(upstream_onnx, home=facedet_home) == exported
    assert exported.stat().st_mtime_ns == stamp


def test_convert_cli_float16_export_of_a_custom_config_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`facedet convert` on a small custom-config upstream checkpoint, writing the float16 export
    that TensorRT 11 builds FP16 engines from (the float32 path is the session's export)."""
    from facedet.cli import main

    torch.manual_seed(0)
    model = YoloFace(ModelConfig.from_dict(TINY_LAYERS, "tiny")).eval()
    weights = write_checkpoint(model, tmp_path / "tiny-face.pt")
    out16 = tmp_path / "tiny-fp16.onnx"
    assert main(["convert", "--weights", str(weights), "--onnx-fp16", str(out16)]) == 0
    assert "float16 inside" in capsys.readouterr().out
    spec = read_spec(out16)
    assert spec is not None
    assert (spec.name, spec.strides, spec.extra["precision"]) == ("tiny-face", (16, 32), "fp16")
    assert spec.output_kind == "decoded" and spec.input_name == INPUT_NAME

    proto = onnx.load(str(out16))
    onnx.checker.check_model(proto, full_check=True)
    weight_types = {i.data_type for i in proto.graph.initializer if len(i.dims) == 4}
    assert weight_types == {onnx.TensorProto.FLOAT16}
    io_types = {v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    assert io_types == {onnx.TensorProto.FLOAT}

    images = np.random.default_rng(0).random((2, 3, 160, 224), dtype=np.float32)
    with torch.no_grad():
        reference = DecodedYoloFace(model.fuse())(torch.from_numpy(images)).numpy()
    half = ort.InferenceSession(str(out16), providers=["CPUExecutionProvider"])
    (rows,) = half.run([OUTPUT_NAME], {INPUT_NAME: images})
    # Half precision inside: scores to a few thousandths, coordinates to a fraction of a pixel.
    np.testing.assert_allclose(rows[..., 4], reference[..., 4], atol=5e-3)
    np.testing.assert_allclose(rows, reference, atol=0.5, rtol=1e-2)


def test_convert_cli_usage_errors(
    tmp_path: Path, upstream_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from facedet.cli import main

    assert main(["convert", "--weights", str(upstream_onnx)]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert (
        main(["convert", "--weights", str(tmp_path / "missing.pt"), "--onnx", str(tmp_path / "x.onnx")]) == 1
    )
    assert "does not exist" in capsys.readouterr().err


def test_engine_without_tensorrt_is_refused_up_front(
    tmp_path: Path, upstream_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("the TensorRT builder is installed here")
    from facedet.cli import main

    code = main(["convert", "--weights", str(upstream_onnx), "--engine", str(tmp_path / "m.plan"), "--fp16"])
    assert code == 1
    assert "TensorRT Python builder" in capsys.readouterr().err
    assert not (tmp_path / "m.plan").exists()
