"""Everything before the TensorRT builder (profiles, version rules, calibration data, timing-cache
location, sidecar), tested here; the build itself only where `tensorrt` imports and a GPU exists."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from converter_testdata import IMAGES
from facedet_converter.calibration import CalibrationData, CalibrationError, list_images
from facedet_converter.engine_plan import (
    DEFAULT_MAX,
    DEFAULT_MIN,
    DEFAULT_OPT,
    EngineBuildError,
    EngineOptions,
    calibration_cache_path,
    make_profiles,
    make_sidecar,
    parse_shape,
    plan_build,
    timing_cache_path,
)
from facedet_server.model.spec import UPSTREAM_YOLOV5N_05, ModelSpec
from facedet_server.tensor.letterbox import letterbox, to_tensor
from facedet_trt.sidecar import Profile, check_compatible, read_sidecar, write_sidecar

OURS = dataclasses.replace(
    UPSTREAM_YOLOV5N_05,
    input_name="images",
    output_names=("candidates",),
    output_kind="decoded",
    input_height=None,
    input_width=None,
    batch_size=None,
)


def test_parse_shape() -> None:
    assert parse_shape("8x3x640x640") == (8, 3, 640, 640)
    assert parse_shape("images:1x3x384x640") == (1, 3, 384, 640)
    for bad in ("8x3x640", "ax3x640x640", ""):
        with pytest.raises(EngineBuildError):
            parse_shape(bad)


def test_profiles() -> None:
    (default,) = make_profiles(None, None, None)
    assert (default.min, default.opt, default.max) == (DEFAULT_MIN, DEFAULT_OPT, DEFAULT_MAX)
    two = make_profiles(
        ["1x3x32x32", "8x3x320x320"], ["1x3x640x640", "16x3x384x640"], ["4x3x1920x1920", "32x3x640x640"]
    )
    assert [p.name for p in two] == ["profile0", "profile1"]
    assert two[1].opt == (16, 3, 384, 640)
    cases = {
        "same number of times": (["1x3x32x32"], [], []),
        "multiples of 32": (["1x3x33x32"], ["1x3x640x640"], ["1x3x640x640"]),
        "to 1920": (["1x3x32x32"], ["1x3x640x640"], ["1x3x1952x640"]),
        "3 channels": (["1x4x32x32"], ["1x4x640x640"], ["1x4x640x640"]),
        "min <= opt <= max": (["2x3x640x640"], ["1x3x640x640"], ["4x3x640x640"]),
    }
    for message, (lo, mid, hi) in cases.items():
        with pytest.raises(EngineBuildError, match=message):
            make_profiles(lo, mid, hi)
    # The P6 models need multiples of 64, their default profile too.
    (p6,) = make_profiles(None, None, None, size_multiple=64)
    assert p6.min == (1, 3, 64, 64)
    with pytest.raises(EngineBuildError, match="multiples of 64"):
        make_profiles(["1x3x32x32"], ["1x3x640x640"], ["1x3x640x640"], size_multiple=64)


def test_plan_for_tensorrt_10() -> None:
    plan = plan_build(EngineOptions(precision="fp16"), "10.3.0.26")
    assert (plan.major, plan.onnx_precision, plan.strongly_typed) == (10, "fp32", False)
    assert plan.builder_flags == ("FP16",) and not plan.calibrate
    plan = plan_build(
        EngineOptions(precision="fp32", version_compatible=True, hardware_compatible=True), "10.8.0"
    )
    assert plan.builder_flags == ("VERSION_COMPATIBLE",) and plan.hardware_compatibility == "AMPERE_PLUS"
    plan = plan_build(
        EngineOptions(precision="fp16", version_compatible=True, exclude_lean_runtime=True), "10.8"
    )
    assert plan.builder_flags == ("FP16", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME")
    plan = plan_build(EngineOptions(precision="int8", calib_dir=Path("calib")), "10.13.2")
    assert plan.builder_flags == ("INT8", "FP16") and plan.calibrate
    assert plan.calibration_shape == DEFAULT_OPT


def test_plan_for_tensorrt_11_uses_strong_typing() -> None:
    plan = plan_build(EngineOptions(precision="fp16"), "11.4.1")
    assert (plan.onnx_precision, plan.strongly_typed, plan.builder_flags) == ("fp16", True, ())
    plan = plan_build(EngineOptions(precision="fp32", version_compatible=True), "11.0.0")
    assert (plan.onnx_precision, plan.builder_flags) == ("fp32", ("VERSION_COMPATIBLE",))
    with pytest.raises(EngineBuildError, match="removed implicit quantization"):
        plan_build(EngineOptions(precision="int8", calib_dir=Path("calib")), "11.4.1")


def test_plans_that_cannot_be_built() -> None:
    for version in ("8.6.1", "12.0.0", "banana"):
        with pytest.raises(EngineBuildError):
            plan_build(EngineOptions(), version)
    with pytest.raises(EngineBuildError, match="--calib"):
        plan_build(EngineOptions(precision="int8"), "10.3.0")
    with pytest.raises(EngineBuildError, match="only applies to --version-compatible"):
        plan_build(EngineOptions(exclude_lean_runtime=True), "10.3.0")


def test_timing_and_calibration_cache_locations(tmp_path: Path) -> None:
    a = timing_cache_path("10.3.0.26", "NVIDIA H100 80GB HBM3", "9.0", home=tmp_path)
    b = timing_cache_path("10.3.0.26", "NVIDIA A10", "8.6", home=tmp_path)
    c = timing_cache_path("10.4.0", "NVIDIA H100 80GB HBM3", "9.0", home=tmp_path)
    assert len({a, b, c}) == 3 and a.parent == tmp_path / "tensorrt"
    assert a.name == "timing-trt10.3.0.26-sm9.0-NVIDIA-H100-80GB-HBM3.cache"
    assert calibration_cache_path(tmp_path / "m.plan") == tmp_path / "m.plan.calib"


def test_sidecar_round_trip(tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not really onnx")
    options = EngineOptions(
        precision="fp16",
        profiles=(Profile("profile0", (1, 3, 32, 32), (4, 3, 640, 640), (8, 3, 1920, 1920)),),
        version_compatible=True,
    )
    sidecar = make_sidecar(
        OURS,
        onnx_path=onnx_file,
        tensorrt_version="10.3.0",
        gpu_name="NVIDIA A10",
        compute_capability="8.6",
        options=options,
        created="2026-01-01T00:00:00+00:00",
    )
    write_sidecar(tmp_path / "model.plan", sidecar)
    back = read_sidecar(tmp_path / "model.plan")
    assert back == sidecar
    assert back.inputs == {"images": "float32"} and back.outputs == {"candidates": "float32"}
    assert back.onnx_sha256 == hashlib.sha256(b"not really onnx").hexdigest()
    assert (
        ModelSpec(**{**back.model_spec, "strides": tuple(back.model_spec["strides"])}).name == "yolov5n-0.5"
    )
    # A version-compatible engine runs on a later 10.x, and on the lean runtime.
    check_compatible(back, tensorrt_version="10.9.0", gpu_name="NVIDIA A10", compute_capability="8.6")
    check_compatible(
        back, tensorrt_version="10.9.0", gpu_name="NVIDIA A10", compute_capability="8.6", lean_runtime=True
    )


def calibration_folder(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "calib"
    folder.mkdir()
    for name in names:
        shutil.copy(IMAGES / name, folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_calibration_batches_are_server_preprocessed_images(tmp_path: Path) -> None:
    from facedet_server.image.decode import decode_encoded

    folder = calibration_folder(tmp_path, ["zidane.jpg", "bus.jpg", "sample.jpg"])
    assert [p.name for p in list_images(folder)] == ["bus.jpg", "sample.jpg", "zidane.jpg"]
    data = CalibrationData(folder, (2, 3, 384, 640))
    batches = list(data)
    assert len(data) == len(batches) == 2
    assert all(b.shape == (2, 3, 384, 640) and b.dtype == np.float32 for b in batches)
    assert min(float(b.min()) for b in batches) >= 0.0 and max(float(b.max()) for b in batches) <= 1.0
    # The last batch is topped up from the start of the list.
    np.testing.assert_array_equal(batches[1][1], batches[0][0])
    # Exactly what the server feeds the network for zidane.jpg (1280x720 -> 640x360, gray bars).
    image = decode_encoded((folder / "zidane.jpg").read_bytes(), 100_000_000, target=(640, 384))
    canvas, _ = letterbox(image.pixels, 640, 384)
    expected = np.empty((3, 384, 640), np.float32)
    to_tensor(canvas, expected)
    np.testing.assert_array_equal(batches[1][0], expected)
    assert np.allclose(batches[1][0][:, :12, :], 114 / 255)
    assert len(CalibrationData(folder, (1, 3, 64, 64), max_batches=2)) == 2


def test_calibration_errors(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        CalibrationData(tmp_path / "missing", (1, 3, 64, 64))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError, match=r"no \.jpg"):
        CalibrationData(empty, (1, 3, 64, 64))
    (empty / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(CalibrationError, match=r"broken\.jpg"):
        list(CalibrationData(empty, (1, 3, 64, 64)))


def _has_cuda() -> bool:
    try:
        from facedet_converter.tensorrt_build import gpu_info

        gpu_info()
    except Exception:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None, reason="the TensorRT builder is not installed"
)
def test_build_engine_with_tensorrt(exported: Path, tmp_path: Path) -> None:
    if not _has_cuda():
        pytest.skip("no CUDA device")
    from facedet_converter.export import read_spec
    from facedet_converter.tensorrt_build import build_engine

    spec = read_spec(exported)
    assert spec is not None
    options = EngineOptions(
        precision="fp32",
        profiles=(Profile("p", (1, 3, 32, 32), (2, 3, 320, 320), (4, 3, 640, 640)),),
        timing_cache=tmp_path / "timing.cache",
    )
    messages: list[Any] = []
    sidecar = build_engine({"fp32": exported}, tmp_path / "m.plan", spec, options, log=messages.append)
    assert (tmp_path / "m.plan").stat().st_size > 0 and (tmp_path / "timing.cache").stat().st_size > 0
    assert read_sidecar(tmp_path / "m.plan") == sidecar
