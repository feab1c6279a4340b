"""The engine sidecar (round trip, clear errors for bad files, TensorRT's compatibility rules) and
the engine loader's checks against it, with a fake TensorRT module: runs on the CPU."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from facedet_server.model.spec import UPSTREAM_YOLOV5N_05, ModelSpec
from facedet_trt.plan import Engine, EngineError, TensorInfo, normalize_dtype
from facedet_trt.sidecar import (
    SCHEMA_VERSION,
    EngineMismatch,
    EngineSidecar,
    Profile,
    SidecarError,
    check_compatible,
    parse_version,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from facedet_trt.trt_module import is_lean, load_tensorrt, tensorrt_version
from fake_tensorrt import fake_plan, fake_tensorrt, sidecar_for


def make_sidecar(**overrides: object) -> EngineSidecar:
    fields: dict[str, object] = {
        "model_spec": dataclasses.asdict(UPSTREAM_YOLOV5N_05),
        "tensorrt_version": "10.3.0",
        "gpu_name": "NVIDIA A10",
        "compute_capability": "8.6",
        "profiles": [Profile("bs1-4", (1, 3, 640, 640), (2, 3, 640, 640), (4, 3, 640, 640))],
        "precision": "fp16",
        "version_compatible": False,
        "onnx_sha256": "0" * 64,
        "created": "2025-01-01T00:00:00+00:00",
        "inputs": {"data": "float32"},
        "outputs": {"stride_8": "float32", "stride_16": "float32", "stride_32": "float32"},
    }
    fields.update(overrides)
    return EngineSidecar(**fields)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    engine = tmp_path / "model.plan"
    sidecar = make_sidecar(hardware_compatible=True)
    path = write_sidecar(engine, sidecar)
    assert path == tmp_path / "model.plan.json" == sidecar_path(engine)
    back = read_sidecar(engine)
    assert back == sidecar
    assert back.profiles[0].max == (4, 3, 640, 640)
    assert isinstance(back.profiles[0].max, tuple)
    assert back.schema == SCHEMA_VERSION
    assert back.hardware_compatible is True
    # No temporary file is left behind by the atomic write.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.plan.json"]


def test_model_spec_survives_the_trip(tmp_path: Path) -> None:
    write_sidecar(tmp_path / "m.plan", make_sidecar())
    data = dict(read_sidecar(tmp_path / "m.plan").model_spec)
    data["strides"] = tuple(data["strides"])
    data["anchors"] = tuple(tuple(tuple(a) for a in level) for level in data["anchors"])
    data["output_names"] = tuple(data["output_names"])
    assert ModelSpec(**data) == UPSTREAM_YOLOV5N_05


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    path = write_sidecar(tmp_path / "m.plan", make_sidecar())
    data = json.loads(path.read_text())
    data["added_by_a_newer_converter"] = 42
    path.write_text(json.dumps(data))
    assert read_sidecar(tmp_path / "m.plan") == make_sidecar()


def test_missing_sidecar(tmp_path: Path) -> None:
    with pytest.raises(SidecarError, match=r"no sidecar .*model\.plan\.json.*facedet convert --engine"):
        read_sidecar(tmp_path / "model.plan")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"schema": 99}', "schema 99"),
        ("{}", "schema None"),
        ('{"schema": 1, "gpu_name": "x"}', "missing field.*compute_capability"),
    ],
)
def test_garbled_sidecar(tmp_path: Path, text: str, pattern: str) -> None:
    sidecar_path(tmp_path / "model.plan").write_text(text)
    with pytest.raises(SidecarError, match=pattern):
        read_sidecar(tmp_path / "model.plan")


def test_bad_values_in_sidecar(tmp_path: Path) -> None:
    path = write_sidecar(tmp_path / "m.plan", make_sidecar())
    data = json.loads(path.read_text())
    data["profiles"][0]["max"] = [1, 3, 640]
    path.write_text(json.dumps(data))
    with pytest.raises(SidecarError, match=r"malformed.*4 dims"):
        read_sidecar(tmp_path / "m.plan")
    data["profiles"][0]["max"] = [4, 3, 640, 640]
    data["precision"] = "fp8"
    path.write_text(json.dumps(data))
    with pytest.raises(SidecarError, match=r"malformed.*precision 'fp8'"):
        read_sidecar(tmp_path / "m.plan")
    data["precision"] = "fp16"
    data["version_compatible"] = "yes"
    path.write_text(json.dumps(data))
    with pytest.raises(SidecarError, match="version_compatible must be true or false"):
        read_sidecar(tmp_path / "m.plan")


def test_profile_validation() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        Profile("p", (4, 3, 640, 640), (1, 3, 640, 640), (8, 3, 640, 640))
    with pytest.raises(ValueError, match="positive NCHW"):
        Profile("p", (0, 3, 640, 640), (1, 3, 640, 640), (8, 3, 640, 640))
    p = Profile("p", (1, 3, 320, 320), (1, 3, 640, 640), (8, 3, 1280, 1280))
    assert p.contains((4, 3, 640, 960))
    assert not p.contains((9, 3, 640, 640))
    assert not p.contains((1, 3, 640))
    with pytest.raises(ValueError, match="at least one"):
        make_sidecar(profiles=[])


def test_parse_version() -> None:
    assert parse_version("10.3.0.26") == (10, 3, 0, 26)
    assert parse_version("11.4.0") == (11, 4, 0)
    assert parse_version("10.0.1rc2") == (10, 0, 1)
    with pytest.raises(ValueError):
        parse_version("unknown")


def check(
    sidecar: EngineSidecar, trt: str, cc: str = "8.6", gpu: str = "NVIDIA A10", lean: bool = False
) -> None:
    check_compatible(
        sidecar,
        tensorrt_version=trt,
        gpu_name=gpu,
        compute_capability=cc,
        lean_runtime=lean,
        engine_name="model.plan",
    )


def test_same_machine_is_fine() -> None:
    check(make_sidecar(), "10.3.0")
    check(make_sidecar(), "10.3.0.26")  # build number only on one side
    # Another GPU of the same compute capability: TensorRT only warns, so do we (not at all).
    check(make_sidecar(), "10.3.0", gpu="NVIDIA RTX A6000")


def test_mismatch_message_names_both_machines() -> None:
    with pytest.raises(EngineMismatch) as info:
        check(make_sidecar(), "11.4.0", cc="9.0", gpu="NVIDIA H100")
    msg = str(info.value)
    assert msg.startswith(
        "engine model.plan was built for NVIDIA A10 (compute 8.6) with TensorRT 10.3.0; "
        "this machine has NVIDIA H100 (9.0) with TensorRT 11.4.0"
    )
    assert "not version-compatible" in msg
    assert "compute capabilities differ" in msg
    assert msg.endswith("rebuild it with `facedet convert --engine`")


def test_default_name_is_the_model() -> None:
    with pytest.raises(EngineMismatch, match=r"^engine for yolov5n-0\.5 was built"):
        check_compatible(make_sidecar(), tensorrt_version="10.4.0", gpu_name="g", compute_capability="8.6")


@pytest.mark.parametrize("runtime", ["10.3.1", "10.4.0", "10.2.0", "10.3.0.27"])
def test_plain_engine_needs_the_exact_release(runtime: str) -> None:
    sidecar = make_sidecar(tensorrt_version="10.3.0.26")
    with pytest.raises(EngineMismatch, match="TensorRT versions must match"):
        check(sidecar, runtime)


def test_version_compatible_rules() -> None:
    sidecar = make_sidecar(version_compatible=True)
    for ok in ("10.3.0", "10.3.1", "10.16.0"):
        check(sidecar, ok)
        check(sidecar, ok, lean=True)
    for bad in ("10.2.0", "11.0.0", "9.9.9"):
        with pytest.raises(EngineMismatch, match=r"runs only on TensorRT 10\.x from 10\.3\.0 on"):
            check(sidecar, bad)


def test_lean_runtime_needs_a_version_compatible_engine() -> None:
    with pytest.raises(EngineMismatch, match="lean runtime loads only version-compatible engines") as info:
        check(make_sidecar(), "10.3.0", lean=True)
    assert "with the TensorRT lean runtime 10.3.0" in str(info.value)


def test_compute_capability_rules() -> None:
    with pytest.raises(EngineMismatch, match="compute capabilities differ"):
        check(make_sidecar(), "10.3.0", cc="8.9")
    hw = make_sidecar(hardware_compatible=True)
    check(hw, "10.3.0", cc="9.0", gpu="NVIDIA H100")
    check(hw, "10.3.0", cc="8.0", gpu="NVIDIA A100")
    with pytest.raises(EngineMismatch, match="Ampere or newer"):
        check(hw, "10.3.0", cc="7.5", gpu="Tesla T4")


def test_unparsable_versions_are_a_mismatch() -> None:
    with pytest.raises(EngineMismatch, match="cannot parse compute capability 'sm90'"):
        check(make_sidecar(), "10.3.0", cc="sm90")
    with pytest.raises(EngineMismatch, match="cannot parse version"):
        check(make_sidecar(tensorrt_version="?"), "10.3.0")


# ---- the engine loader's checks, with the fake TensorRT module (no GPU, no TensorRT) ----------

H100 = ("NVIDIA H100 80GB HBM3", "9.0")


def load_fake(plan: bytes, sidecar: EngineSidecar, trt: ModuleType | None = None, **kwargs: Any) -> Engine:
    return Engine.from_bytes(
        plan, sidecar, name="model.plan", trt=trt or fake_tensorrt(), device_info=H100, **kwargs
    )


def test_fake_engine_loads_and_describes_itself(tmp_path: Path) -> None:
    plan = fake_plan()
    (tmp_path / "model.plan").write_bytes(plan)
    write_sidecar(tmp_path / "model.plan", sidecar_for(plan))
    engine = Engine.load(tmp_path / "model.plan", trt=fake_tensorrt(), device_info=H100)
    assert engine.name == "model.plan"
    assert engine.input == TensorInfo("data", "float32", True, (-1, 3, -1, -1))
    assert [t.name for t in engine.outputs] == ["copy", "head"]
    assert engine.profiles[0].max == (4, 3, 64, 64)
    assert engine.tensorrt_version == "10.3.0"
    assert not engine.lean
    # Plain engines do not get to run host code from the plan.
    assert engine.runtime.engine_host_code_allowed is False
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.create_context()


def test_static_engine() -> None:
    plan = fake_plan(static_shape=(1, 3, 640, 640))
    engine = load_fake(plan, sidecar_for(plan))
    assert engine.profiles[0].min == engine.profiles[0].max == (1, 3, 640, 640)


def test_version_compatible_engine_allows_host_code_and_lean_runtime() -> None:
    plan = fake_plan()
    sidecar = sidecar_for(plan, tensorrt_version="10.3.0", version_compatible=True)
    engine = load_fake(plan, sidecar, trt=fake_tensorrt("10.8.0", name="fake_tensorrt_lean"))
    assert engine.lean
    assert engine.runtime.engine_host_code_allowed is True


def test_lean_runtime_refuses_a_plain_engine_before_deserializing() -> None:
    plan = b"not even a plan"
    with pytest.raises(EngineMismatch, match="lean runtime loads only version-compatible"):
        load_fake(plan, sidecar_for(fake_plan()), trt=fake_tensorrt(name="fake_tensorrt_lean"))


def test_foreign_gpu_is_refused_before_deserializing() -> None:
    sidecar = sidecar_for(fake_plan(), gpu_name="NVIDIA A10", compute_capability="8.6")
    with pytest.raises(
        EngineMismatch, match=r"^engine model\.plan was built for NVIDIA A10 \(compute 8\.6\)"
    ):
        load_fake(b"garbage", sidecar)


def test_garbage_plan_is_a_clear_error() -> None:
    with pytest.raises(EngineError) as info:
        load_fake(b"\x00garbage" * 64, sidecar_for(fake_plan()))
    msg = str(info.value)
    assert "could not deserialize engine model.plan (512 bytes" in msg
    assert "magic tag does not match" in msg  # what TensorRT logged
    assert "facedet convert --engine" in msg


def test_empty_and_missing_plans(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="is empty"):
        load_fake(b"", sidecar_for(fake_plan()))
    with pytest.raises(EngineError, match="no engine file"):
        Engine.load(tmp_path / "x.plan", sidecar_for(fake_plan()), trt=fake_tensorrt(), device_info=H100)
    with pytest.raises(SidecarError, match="no sidecar"):
        Engine.load(tmp_path / "x.plan", trt=fake_tensorrt(), device_info=H100)


def test_runtime_creation_failure_is_caught() -> None:
    trt = fake_tensorrt()

    class BrokenRuntime(trt.Runtime):  # type: ignore[name-defined, misc]
        def __init__(self, logger: Any) -> None:
            super().__init__(logger)
            logger.log(trt.ILogger.Severity.ERROR, "createInferRuntime: CUDA initialization failure")

        def deserialize_cuda_engine(self, plan: bytes) -> Any:
            raise AssertionError("must not be reached: the real one crashes here")

    trt.Runtime = BrokenRuntime  # type: ignore[attr-defined]
    with pytest.raises(EngineError, match=r"cannot create a TensorRT runtime.*CUDA initialization failure"):
        load_fake(fake_plan(), sidecar_for(fake_plan()), trt=trt)


def test_plan_and_sidecar_that_do_not_belong_together() -> None:
    plan = fake_plan()
    sidecar = sidecar_for(plan)
    wrong = dataclasses.replace(
        sidecar,
        inputs={"images": "float32"},
        outputs={"copy": "float16", "head": "float32"},
        profiles=[Profile("p0", (1, 3, 32, 32), (1, 3, 64, 64), (8, 3, 64, 64))],
        hardware_compatible=True,
    )
    with pytest.raises(EngineError) as info:
        load_fake(plan, wrong)
    msg = str(info.value)
    assert msg.startswith("engine model.plan does not match its sidecar")
    assert "inputs are ['data'] in the engine but ['images'] in the sidecar" in msg
    assert "output 'copy' is float32 in the engine but float16 in the sidecar" in msg
    assert "profile 0 (p0)" in msg and "max=(4, 3, 64, 64) in the engine" in msg
    assert "not hardware-compatible" in msg
    spec_wrong = dataclasses.replace(sidecar, model_spec={**sidecar.model_spec, "output_names": ["x"]})
    with pytest.raises(EngineError, match="model spec's outputs are"):
        load_fake(plan, spec_wrong)


def test_normalize_dtype() -> None:
    assert normalize_dtype("FLOAT") == normalize_dtype("DataType.FLOAT") == "float32"
    assert normalize_dtype("kHALF") == normalize_dtype("fp16") == normalize_dtype("float16") == "float16"
    assert normalize_dtype("float32") == "float32"


def test_trt_module_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        ImportError, match=r"no TensorRT runtime module.*surely_not_tensorrt: ModuleNotFoundError"
    ):
        load_tensorrt(("surely_not_tensorrt",))
    with pytest.raises(ImportError, match="json: imported but has no Runtime"):
        load_tensorrt(("json",))
    monkeypatch.setitem(sys.modules, "fake_trt_for_shim", fake_tensorrt())
    assert load_tensorrt(("surely_not_tensorrt", "fake_trt_for_shim")).__name__ == "fake_tensorrt"
    assert is_lean(fake_tensorrt(name="tensorrt_lean_bindings"))
    assert tensorrt_version(fake_tensorrt("11.4.0")) == "11.4.0"


def test_spec_and_device_helpers() -> None:
    backend = pytest.importorskip("facedet_server.runtime.tensorrt")
    sidecar = make_sidecar()
    assert backend.spec_from_sidecar(sidecar) == UPSTREAM_YOLOV5N_05
    assert backend.parse_device("cuda:1") == 1
    assert backend.parse_device("cuda") == 0
    assert backend.parse_device(2) == 2
    with pytest.raises(ValueError, match="CUDA device"):
        backend.parse_device("cpu")
