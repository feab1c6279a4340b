"""Our YOLOv5-Face family: the configs build the published networks, fusing keeps the function,
and the in-graph decoding is the server's decoding."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from converter_testdata import TINY_LAYERS  # noqa: E402
from converter_upstream_format import randomize_batch_norm  # noqa: E402
from facedet_nn.configs import CONFIGS, ModelConfig, get_config  # noqa: E402
from facedet_nn.model import (  # noqa: E402
    DecodedYoloFace,
    YoloFace,
    count_macs,
    count_parameters,
)
from facedet_server.faces.heads import decode_head  # noqa: E402

# Parameter counts (millions) from the upstream README's tables; ours must match to the digit.
UPSTREAM_PARAMS_M = {
    "yolov5n-0.5": 0.447,
    "yolov5n": 1.726,
    "yolov5s": 7.075,
    "yolov5m": 21.063,
    "yolov5l": 46.627,
    "yolov5s6": 12.386,
    "yolov5m6": 35.485,
    "yolov5l6": 76.674,
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_build_the_published_networks(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no random init
        model = YoloFace(get_config(name))
    expected_strides = (8, 16, 32, 64) if name.endswith("6") else (8, 16, 32)
    assert model.strides == expected_strides
    assert len(model.anchors) == len(expected_strides)
    assert model.detect.no == 16
    if name in UPSTREAM_PARAMS_M:
        assert round(count_parameters(model) / 1e6, 3) == UPSTREAM_PARAMS_M[name]


def test_macs_match_the_upstream_flops_column() -> None:
    # Upstream's FLOPs(G) column is thop's multiply-accumulate count at 640x480 (conv layers
    # dominate; thop also counts batch norm and activations, hence the small gap).
    macs = count_macs(get_config("yolov5n-0.5"), 480, 640) / 1e9
    assert macs == pytest.approx(0.571, rel=0.05)
    assert count_macs(get_config("yolov5s"), 480, 640) / 1e9 == pytest.approx(5.751, rel=0.05)


def test_config_round_trips_through_the_upstream_yaml_layout() -> None:
    for config in CONFIGS.values():
        assert ModelConfig.from_dict(config.to_dict(), config.name) == config
    with pytest.raises(ValueError, match="malformed"):
        ModelConfig.from_dict({"backbone": []}, "broken")


def test_unknown_block_is_refused_by_name() -> None:
    data = dict(TINY_LAYERS, backbone=[[-1, 1, "Transformer", [64]], *TINY_LAYERS["backbone"][1:]])
    with pytest.raises(ValueError, match="Transformer"):
        YoloFace(ModelConfig.from_dict(data, "bad"))


def test_fusing_batch_norm_keeps_the_outputs() -> None:
    torch.manual_seed(0)
    model = YoloFace(ModelConfig.from_dict(TINY_LAYERS, "tiny")).eval()
    randomize_batch_norm(model)
    x = torch.rand(2, 3, 128, 96)
    with torch.no_grad():
        before = model(x)
        model.fuse()
        assert model.fused and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        after = model(x)
        model.fuse()  # idempotent
    for a, b in zip(before, after, strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-5


def test_raw_head_layout_is_upstreams() -> None:
    model = YoloFace(ModelConfig.from_dict(TINY_LAYERS, "tiny")).eval()
    with torch.no_grad():
        heads = model(torch.rand(3, 3, 160, 96))
    assert [tuple(h.shape) for h in heads] == [(3, 2, 10, 6, 16), (3, 2, 5, 3, 16)]


def test_decoding_matches_the_servers() -> None:
    torch.manual_seed(1)
    model = YoloFace(ModelConfig.from_dict(TINY_LAYERS, "tiny")).eval()
    decoded = DecodedYoloFace(model).eval()
    heads = [torch.randn(2, 2, 6, 4, 16) * 3, torch.randn(2, 2, 3, 2, 16) * 3]
    with torch.no_grad():
        ours = decoded.decoder(heads).numpy()
    theirs = np.concatenate(
        [
            decode_head(h.numpy(), stride, np.asarray(anchors, np.float32))
            for h, stride, anchors in zip(heads, model.strides, model.anchors, strict=True)
        ],
        axis=1,
    )
    # The server's rows hold corners, ours centre and size.
    corners = ours.copy()
    corners[..., 0:2] = ours[..., 0:2] - ours[..., 2:4] / 2
    corners[..., 2:4] = ours[..., 0:2] + ours[..., 2:4] / 2
    np.testing.assert_allclose(corners, theirs, rtol=1e-5, atol=1e-4)


def test_decoding_runs_in_float32_for_a_half_model() -> None:
    model = YoloFace(ModelConfig.from_dict(TINY_LAYERS, "tiny")).fuse().eval()
    decoded = DecodedYoloFace(model).half().eval()
    heads = [torch.randn(1, 2, 6, 4, 16).half(), torch.randn(1, 2, 3, 2, 16).half()]
    with torch.no_grad():
        rows = decoded.decoder(heads)
    assert rows.dtype == torch.float32 and rows.shape == (1, 2 * 24 + 2 * 6, 15)
