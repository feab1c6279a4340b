"""Upstream training checkpoints: imported without upstream code, equal to the network they hold,
and refused, without running anything, when the pickle names what a checkpoint never does."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from converter_testdata import TINY_LAYERS  # noqa: E402
from converter_upstream_format import randomize_batch_norm, upstream_modules, write_checkpoint  # noqa: E402
from facedet_nn.checkpoint import (  # noqa: E402
    CheckpointError,
    UnsafeCheckpointError,
    import_checkpoint,
    load_pickle,
)
from facedet_nn.configs import ModelConfig, get_config  # noqa: E402
from facedet_nn.model import YoloFace  # noqa: E402


def half_rounded(model: YoloFace) -> YoloFace:
    """`model` with every weight rounded through float16, as an fp16 checkpoint stores it."""
    copy = YoloFace(model.config)
    copy.load_state_dict(
        {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    return copy.eval()


def heads(model: YoloFace, x: Any) -> list[Any]:
    with torch.no_grad():
        return list(model(x))


def max_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((u - v).abs().max()) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("name", ["yolov5n-0.5", "yolov5s"])
def test_fp16_checkpoint_reproduces_the_network(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = YoloFace(get_config(name)).eval()
    randomize_batch_norm(model)
    path = write_checkpoint(model, tmp_path / f"{name}-face.pt")
    imported = import_checkpoint(path)
    assert imported.config.name == name  # recognised from the checkpoint's own config
    assert imported.fused and imported.anchors == model.anchors
    x = torch.rand(2, 3, 256, 192)
    assert max_diff(heads(imported, x), heads(half_rounded(model), x)) <= 1e-5


def test_checkpoint_saved_after_upstream_fuse(tmp_path: Path) -> None:
    # upstream's Model.fuse() folds batch norm into Conv modules only; ShuffleV2 pairs stay apart.
    torch.manual_seed(1)
    model = YoloFace(get_config("yolov5n-0.5")).eval()
    randomize_batch_norm(model)
    imported = import_checkpoint(write_checkpoint(model, tmp_path / "fused.pt", fuse=True, half=False))
    x = torch.rand(1, 3, 128, 160)
    assert max_diff(heads(imported, x), heads(model, x)) <= 1e-5


def test_ema_copy_custom_config_and_trained_anchors(tmp_path: Path) -> None:
    # A custom config is taken from the checkpoint; anchors come from the Detect layer, since
    # upstream's autoanchor may have replaced the config's during training.
    data = dict(TINY_LAYERS, anchors=[[3.5, 4.25, 7, 9], [20, 26, 40, 52]])
    model = YoloFace(ModelConfig.from_dict(data, "tiny")).eval()
    path = write_checkpoint(model, tmp_path / "my-faces.pt", key="ema")
    imported = import_checkpoint(path)
    assert imported.config.name == "my-faces"
    assert imported.anchors == (((3.5, 4.25), (7.0, 9.0)), ((20.0, 26.0), (40.0, 52.0)))
    x = torch.rand(1, 3, 96, 64)
    assert max_diff(heads(imported, x), heads(half_rounded(model), x)) <= 1e-5


def test_checkpoint_that_does_not_fit_its_config(tmp_path: Path) -> None:
    model = YoloFace(get_config("yolov5n-0.5")).eval()
    path = write_checkpoint(model, tmp_path / "n.pt")
    with pytest.raises(
        CheckpointError, match=r"layer model\.0\.stem_1\.conv has shape \[16, 3, 3, 3\] in the "
    ):
        import_checkpoint(path, "yolov5n")
    with pytest.raises(
        CheckpointError, match=r"does not fit yolov5s \(\d+ tensors missing, \d+ unexpected; first"
    ):
        import_checkpoint(path, "yolov5s")


def test_legacy_and_foreign_files_are_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(CheckpointError, match="not a zip-format"):
        import_checkpoint(legacy)
    assert not marker.exists()


class _Evil:
    """Pickles as a call to os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil(_Evil):
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


class _ImportEvil(_Evil):
    # The first step of most payloads: import a module to reach its functions.
    def __reduce__(self) -> tuple[Any, ...]:
        return (__import__, ("os",))


@pytest.mark.parametrize("evil", [_Evil, _EvalEvil, _ImportEvil])
def test_malicious_pickle_in_a_real_checkpoint_is_refused(tmp_path: Path, evil: type[_Evil]) -> None:
    marker = tmp_path / "ran"
    model = YoloFace(ModelConfig.from_dict(TINY_LAYERS, "tiny")).eval()
    path = write_checkpoint(model, tmp_path / "good.pt")
    # Same checkpoint, plus a payload where upstream keeps optimizer state.
    ckpt_path = tmp_path / "evil.pt"
    with upstream_modules():
        from converter_upstream_format import upstream_model

        torch.save({"model": upstream_model(model).half(), "optimizer": evil(marker)}, ckpt_path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        import_checkpoint(ckpt_path)
    assert not marker.exists()
    import_checkpoint(path)  # the clean one still loads


def test_handcrafted_pickle_opcodes_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payloads = {
        "posix.system": b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
        "builtins.exec": b"cbuiltins\nexec\n(S'open(\"" + str(marker).encode() + b'", "w")\'\ntR.',
        "subprocess.call": b"csubprocess\ncall\n((S'touch'\nS'" + str(marker).encode() + b"'\nltR.",
        "torch.load": b"ctorch\nload\n(S'x'\ntR.",
        "nested in a stand-in": b"cmodels.yolo\nModel\n)\x81}(S'x'\ncos\nsystem\n(S'touch "
        + str(marker).encode()
        + b"'\ntRub.",
    }
    for label, payload in payloads.items():
        path = tmp_path / f"{label}.pt"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
            zf.writestr("archive/byteorder", "little")
        with pytest.raises(UnsafeCheckpointError):
            load_pickle(path)
        assert not marker.exists(), label


def test_tensor_records_are_bounds_checked(tmp_path: Path) -> None:
    # A tensor whose view reaches past its storage must not read beyond the buffer.
    buffer = io.BytesIO()
    torch.save({"t": torch.zeros(4)}, buffer)
    with (
        zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src,
        zipfile.ZipFile(tmp_path / "bad.pt", "w") as dst,
    ):
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"K\x04\x85", b"M\x00\x10\x85")  # size (4,) -> (4096,)
            dst.writestr(item, data)
    with pytest.raises(CheckpointError, match="past the end of its storage"):
        load_pickle(tmp_path / "bad.pt")


def test_cyclic_module_tree_terminates(tmp_path: Path) -> None:
    from converter_upstream_format import upstream_model

    model = YoloFace(ModelConfig.from_dict(TINY_LAYERS, "tiny")).eval()
    upstream = upstream_model(model)
    upstream.model[0].add_module("loop", upstream.model)  # a pickle may reference anything
    with upstream_modules():
        torch.save({"model": upstream}, tmp_path / "loop.pt")
    imported = import_checkpoint(tmp_path / "loop.pt")
    x = torch.rand(1, 3, 64, 64)
    assert max_diff(heads(imported, x), heads(model, x)) <= 1e-5
