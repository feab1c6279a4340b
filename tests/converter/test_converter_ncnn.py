"""yolov5n-face from its ncnn files (facedet_nn.ncnn_weights): our PyTorch model with the imported
weights gives ncnn's raw heads on the sample photos, the same faces after the server's decoding
and NMS, and our ONNX export of it (made by `facedet convert`) finds them too; malformed ncnn
files are refused with a message that says what is wrong and where.

ncnn itself (pip's `ncnn`) is the reference: every expected value is computed from its output
here, nothing is hard-coded."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from converter_testdata import IMAGES  # noqa: E402
from facedet_nn.configs import get_config  # noqa: E402
from facedet_nn.loading import load_weights  # noqa: E402
from facedet_nn.model import count_parameters  # noqa: E402
from facedet_nn.ncnn_weights import (  # noqa: E402
    NcnnFormatError,
    graph_convs,
    import_ncnn,
    onnx_style_convs,
    parse_bin,
    parse_param,
    read_bin,
    read_param,
)
from facedet_nn.onnx_weights import WeightImportError  # noqa: E402
from facedet_server.faces.heads import decode_heads  # noqa: E402
from facedet_server.faces.options import Options  # noqa: E402
from facedet_server.faces.select import select_faces  # noqa: E402
from facedet_server.image.decode import decode_encoded  # noqa: E402
from facedet_server.model.spec import UPSTREAM_YOLOV5N_05, ModelSpec  # noqa: E402
from facedet_server.tensor.letterbox import Letterbox, input_shape_for, letterbox, to_tensor  # noqa: E402

PHOTOS = ("zidane.jpg", "sample.jpg", "bus.jpg")
NCNN_OUTPUTS = ("981", "983", "985")  # strides 8, 16, 32
# Both sides run float32 arithmetic on the same fp16-stored weights, so only rounding separates
# them (measured: 3.4e-5 at most, on logits up to 28).
HEAD_TOLERANCE = 1e-4
FACE_TOLERANCE_PX = 0.05
OPTIONS = Options(min_confidence=0.5, iou_threshold=0.5, max_faces=1000, min_face_size=0.0)


@dataclass(frozen=True)
class Photo:
    name: str
    tensor: np.ndarray  # (1, 3, H, W), as the server letterboxes it
    transform: Letterbox
    width: int
    height: int


@pytest.fixture(scope="module")
def face_model(ncnn_yolov5n_face: Path) -> Any:
    return load_weights(ncnn_yolov5n_face)


@pytest.fixture(scope="module")
def ncnn_net(ncnn_yolov5n_face: Path) -> Any:
    ncnn = pytest.importorskip("ncnn")
    net = ncnn.Net()
    # Where the CPU has them, ncnn computes in fp16 or bf16; ask for float32 everywhere so the
    # comparison measures the import, not ncnn's choice of precision.
    for option in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, option, False)
    assert net.load_param(str(ncnn_yolov5n_face)) == 0
    assert net.load_model(str(ncnn_yolov5n_face.with_suffix(".bin"))) == 0
    return net


@pytest.fixture(scope="module")
def photos() -> list[Photo]:
    out = []
    for name in PHOTOS:
        path = IMAGES / name
        if not path.is_file():
            pytest.skip(f"{path} not found; set FACEDET_SHARED to the shared data folder")
        image = decode_encoded(path.read_bytes(), 100_000_000, target=(640, 640))
        w, h = input_shape_for(image.width, image.height, None, 640, 32)
        canvas, transform = letterbox(image.pixels, w, h, source_scale=(image.scale_x, image.scale_y))
        tensor = np.empty((1, 3, h, w), np.float32)
        to_tensor(canvas, tensor[0])
        out.append(Photo(name, tensor, transform, image.width, image.height))
    return out


def ncnn_heads(net: Any, tensor: np.ndarray) -> list[np.ndarray]:
    """ncnn's raw heads, (3, cells, 16) per level, as (1, 3, H/s, W/s, 16) like ours."""
    ncnn = pytest.importorskip("ncnn")

    image = np.ascontiguousarray(tensor[0])
    # ncnn.Mat wraps `image` without owning it: both stay referenced until the last extract.
    mat = ncnn.Mat(image)
    extractor = net.create_extractor()
    assert extractor.input("data", mat) == 0
    heads = []
    for name, stride in zip(NCNN_OUTPUTS, (8, 16, 32), strict=True):
        status, out = extractor.extract(name)
        assert status == 0, name
        rows, cols = tensor.shape[2] // stride, tensor.shape[3] // stride
        heads.append(np.array(out).reshape(1, 3, rows, cols, 16))
    del mat, image
    return heads


def raw_spec(model: Any, output_names: tuple[str, ...]) -> ModelSpec:
    return ModelSpec(
        name=model.config.name,
        strides=model.strides,
        anchors=model.anchors,
        input_name="data",
        output_names=output_names,
        output_kind="raw_heads",
        input_height=None,
        input_width=None,
    )


def faces(outputs: list[np.ndarray], spec: ModelSpec, photo: Photo) -> np.ndarray:
    (candidates,) = decode_heads(outputs, spec)
    return select_faces(candidates, OPTIONS, photo.transform, photo.width, photo.height)


def our_heads(model: Any, tensor: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [head.numpy() for head in model(torch.from_numpy(tensor))]


def test_the_graph_is_yolov5n_under_its_published_name(face_model: Any, ncnn_yolov5n_face: Path) -> None:
    assert face_model.config.name == "yolov5n-face" and face_model.fused
    ours, yolov5n = face_model.config, get_config("yolov5n")
    assert (ours.depth_multiple, ours.width_multiple, ours.layers) == (
        yolov5n.depth_multiple,
        yolov5n.width_multiple,
        yolov5n.layers,
    )
    assert face_model.strides == (8, 16, 32)
    assert face_model.anchors == UPSTREAM_YOLOV5N_05.anchors  # the README: same as yolov5n-0.5
    # 1.726 M with batch norm (upstream's count); folding drops its scale and shift.
    assert round(count_parameters(face_model) / 1e6, 3) == 1.716
    graph = read_param(ncnn_yolov5n_face)
    weights = read_bin(graph, ncnn_yolov5n_face.with_suffix(".bin"))
    assert len(weights) == len(graph_convs(graph)) == 85
    assert {w.encoding for w in weights.values()} == {"fp16"}
    # Forcing the plain architecture name works too; the weights are the same.
    plain = import_ncnn(ncnn_yolov5n_face, config=get_config("yolov5n"))
    assert plain.config.name == "yolov5n"
    for a, b in zip(plain.state_dict().values(), face_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("index", range(len(PHOTOS)), ids=PHOTOS)
def test_raw_heads_match_ncnn(face_model: Any, ncnn_net: Any, photos: list[Photo], index: int) -> None:
    photo = photos[index]
    theirs = ncnn_heads(ncnn_net, photo.tensor)
    ours = our_heads(face_model, photo.tensor)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        worst = float(np.abs(a - b).max())
        assert worst <= HEAD_TOLERANCE, (photo.name, worst)
        assert worst / float(np.abs(b).max()) <= 1e-5, photo.name


@pytest.mark.parametrize("index", range(len(PHOTOS)), ids=PHOTOS)
def test_same_faces_as_ncnn(face_model: Any, ncnn_net: Any, photos: list[Photo], index: int) -> None:
    photo = photos[index]
    expected = faces(ncnn_heads(ncnn_net, photo.tensor), raw_spec(face_model, NCNN_OUTPUTS), photo)
    actual = faces(our_heads(face_model, photo.tensor), raw_spec(face_model, NCNN_OUTPUTS), photo)
    assert len(expected) > 0, photo.name
    assert len(actual) == len(expected), photo.name
    np.testing.assert_allclose(actual[:, :4], expected[:, :4], atol=FACE_TOLERANCE_PX)
    np.testing.assert_allclose(actual[:, 5:], expected[:, 5:], atol=FACE_TOLERANCE_PX)
    np.testing.assert_allclose(actual[:, 4], expected[:, 4], atol=1e-5)


@pytest.fixture(scope="module")
def converted(ncnn_yolov5n_face: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`facedet convert --weights yolov5n.param --onnx out.onnx` (which checks the export in ONNX
    Runtime against PyTorch at three shapes and batch sizes before it returns 0)."""
    pytest.importorskip("onnxscript")
    from facedet_converter.commands import add_arguments, run

    dst = tmp_path_factory.mktemp("ncnn-export") / "yolov5n-face.onnx"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--weights", str(ncnn_yolov5n_face), "--onnx", str(dst)])) == 0
    return dst


def test_export_is_named_and_sourced(converted: Path, ncnn_yolov5n_face: Path) -> None:
    from facedet_server.model.onnx_metadata import read_spec

    spec = read_spec(converted)
    assert spec is not None
    assert (spec.name, spec.output_kind, spec.dynamic_shape, spec.dynamic_batch) == (
        "yolov5n-face",
        "decoded",
        True,
        True,
    )
    assert spec.source == "yolov5n.param + yolov5n.bin"
    weights_sha = hashlib.sha256(ncnn_yolov5n_face.with_suffix(".bin").read_bytes()).hexdigest()
    assert spec.source_sha256 == weights_sha
    # Our export brings back its config, name included, where the torch runtime loads it.
    from facedet_server.runtime.torch_model import load_network

    assert load_network(converted).config.name == "yolov5n-face"


@pytest.mark.parametrize("index", range(len(PHOTOS)), ids=PHOTOS)
def test_export_finds_ncnns_faces(
    converted: Path, face_model: Any, ncnn_net: Any, photos: list[Photo], index: int
) -> None:
    import onnxruntime as ort
    from facedet_nn.model import DecodedYoloFace
    from facedet_server.model.onnx_metadata import read_spec

    photo = photos[index]
    spec = read_spec(converted)
    assert spec is not None
    session = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    outputs = session.run(list(spec.output_names), {spec.input_name: photo.tensor})
    with torch.no_grad():
        reference = DecodedYoloFace(face_model).eval()(torch.from_numpy(photo.tensor)).numpy()
    # Candidates against PyTorch: scores to 1e-4, coordinates to 1e-4 of the largest anchor.
    assert float(np.abs(outputs[0][..., 4] - reference[..., 4]).max()) <= 1e-4
    assert float(np.abs(outputs[0] - reference).max()) <= 1e-4 * 433 + 1e-6 * float(np.abs(reference).max())
    expected = faces(ncnn_heads(ncnn_net, photo.tensor), raw_spec(face_model, NCNN_OUTPUTS), photo)
    actual = faces(outputs, spec, photo)
    assert len(actual) == len(expected) > 0, photo.name
    np.testing.assert_allclose(actual, expected, atol=FACE_TOLERANCE_PX)


# --- malformed files ------------------------------------------------------------------------


def _pair(tmp_path: Path, param_text: str, bin_data: bytes) -> Path:
    param = tmp_path / "model.param"
    param.write_text(param_text)
    param.with_suffix(".bin").write_bytes(bin_data)
    return param


def test_truncated_bin_is_refused_naming_the_layer(ncnn_yolov5n_face: Path, tmp_path: Path) -> None:
    data = ncnn_yolov5n_face.with_suffix(".bin").read_bytes()
    param = _pair(tmp_path, ncnn_yolov5n_face.read_text(), data[:-1000])
    with pytest.raises(NcnnFormatError, match=r"model\.bin is truncated: layer Conv_333 weight_data"):
        import_ncnn(param)


def test_bin_with_bytes_left_over_is_refused(ncnn_yolov5n_face: Path, tmp_path: Path) -> None:
    data = ncnn_yolov5n_face.with_suffix(".bin").read_bytes()
    param = _pair(tmp_path, ncnn_yolov5n_face.read_text(), data + bytes(8))
    with pytest.raises(NcnnFormatError, match="8 bytes after the last layer's weights"):
        import_ncnn(param)


def test_wrong_magic_is_refused(ncnn_yolov5n_face: Path, tmp_path: Path) -> None:
    text = ncnn_yolov5n_face.read_text().replace("7767517", "7767518", 1)
    param = _pair(tmp_path, text, ncnn_yolov5n_face.with_suffix(".bin").read_bytes())
    with pytest.raises(NcnnFormatError, match=r"not an ncnn text \.param: .*magic 7767517, got '7767518'"):
        import_ncnn(param)


def test_missing_bin_is_named(ncnn_yolov5n_face: Path, tmp_path: Path) -> None:
    param = tmp_path / "alone.param"
    shutil.copy(ncnn_yolov5n_face, param)
    with pytest.raises(FileNotFoundError, match=r"alone\.bin"):
        load_weights(param)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("224 251", "225 251", 1), "declares 225 layers but describes 224"),
        (lambda t: t.replace("1 1 389 391", "1 1 388 391", 1), "reads blob 388, which no layer before"),
        (lambda t: t.replace("-23300=2,64,-233", "-23300=3,64,-233", 1), "declares 3 values but has 2"),
        (lambda t: t.replace("5=1 6=864", "5=1 6=865", 1), "Conv_0.*weight_data_size 865 does not fit 32"),
    ],
    ids=["layer-count", "unknown-blob", "array-count", "weight-size"],
)
def test_malformed_param_is_refused(ncnn_yolov5n_face: Path, edit: Any, message: str) -> None:
    text = edit(ncnn_yolov5n_face.read_text())
    with pytest.raises(NcnnFormatError, match=message):
        graph_convs(parse_param(text, "edited.param"))


def test_wrong_config_names_the_first_mismatching_layer(ncnn_yolov5n_face: Path) -> None:
    with pytest.raises(WeightImportError) as info:
        import_ncnn(ncnn_yolov5n_face, config=get_config("yolov5n-0.5"))
    message = str(info.value)
    assert "layer model.0.stem_1.conv (conv #0: 3->16" in message and "ncnn layer Conv_0" in message


def test_a_different_activation_is_caught(ncnn_yolov5n_face: Path, tmp_path: Path) -> None:
    text = ncnn_yolov5n_face.read_text().replace("Swish                    Mul_5 ", "ReLU Mul_5 ", 1)
    param = _pair(tmp_path, text, ncnn_yolov5n_face.with_suffix(".bin").read_bytes())
    with pytest.raises(WeightImportError, match=r"model\.0\.stem_2a\.conv .*then silu.*Conv_3.*then relu"):
        import_ncnn(param)


# --- ncnn's weight encodings, on a one-convolution graph ------------------------------------

ONE_CONV = """7767517
2 2
Input            data   0 1 data
Convolution      conv   1 1 data out 0=1 1=1 5=1 6=3
"""
WEIGHT = np.array([0.5, -1.25, 3.0], np.float32)
BIAS = struct.pack("<f", 0.75)


@pytest.mark.parametrize(
    ("encoded", "encoding"),
    [
        (struct.pack("<I", 0) + WEIGHT.tobytes(), "fp32"),
        (struct.pack("<I", 0x0002C056) + WEIGHT.tobytes(), "fp32"),
        # 3 halves are 6 bytes, padded to 8.
        (struct.pack("<I", 0x01306B47) + WEIGHT.astype("<f2").tobytes() + bytes(2), "fp16"),
        # A non-zero tag of no known kind: a 256-float table, then one index byte per weight, padded.
        (
            bytes([1, 0, 0, 0])
            + (np.arange(256, dtype="<f4") * 0.25).astype("<f4").tobytes()
            + bytes([2, 251, 12, 0]),
            "table",
        ),
    ],
    ids=["fp32", "fp32-scaled-tag", "fp16", "table"],
)
def test_weight_encodings(encoded: bytes, encoding: str) -> None:
    graph = parse_param(ONE_CONV)
    weights = parse_bin(graph, encoded + BIAS)["conv"]
    assert weights.encoding == encoding
    expected = np.array([0.5, 62.75, 3.0], np.float32) if encoding == "table" else WEIGHT
    np.testing.assert_array_equal(weights.weight, expected)
    assert weights.bias is not None and weights.bias.tolist() == [0.75]


def test_int8_weights_are_read_but_not_imported() -> None:
    graph = parse_param(ONE_CONV)
    weights = parse_bin(graph, struct.pack("<I", 0x000D4B38) + bytes([1, 2, 255, 0]) + BIAS)
    assert weights["conv"].encoding == "int8" and weights["conv"].weight.tolist() == [1, 2, -1]
    with pytest.raises(WeightImportError, match="int8-quantized"):
        onnx_style_convs(graph_convs(graph), weights)


def test_a_layer_of_unknown_weight_layout_is_refused() -> None:
    text = ONE_CONV.replace("2 2", "3 3") + "BatchNorm        bn     1 1 out bn_out 0=1\n"
    with pytest.raises(NcnnFormatError, match="layer bn is a BatchNorm"):
        parse_bin(parse_param(text), struct.pack("<I", 0) + WEIGHT.tobytes() + BIAS)
