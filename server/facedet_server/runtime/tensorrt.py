"""The server's `Backend` on a TensorRT engine (see facedet_server.runtime.base)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from facedet_trt.plan import Engine, EngineError
from facedet_trt.runner import TensorRTRunner
from facedet_trt.sidecar import EngineSidecar

from facedet_server.model.spec import METADATA_KEY, ModelSpec


def spec_from_sidecar(sidecar: EngineSidecar) -> ModelSpec:
    # from_metadata already turns JSON lists back into the spec's tuples.
    spec = ModelSpec.from_metadata({METADATA_KEY: json.dumps(sidecar.model_spec)})
    if spec is None:  # pragma: no cover - the key is always there
        raise EngineError("sidecar has no model spec")
    return spec


def parse_device(device: str | int) -> int:
    """'cuda:1' / 'cuda' / 1 -> 1 / 0 / 1."""
    if isinstance(device, int):
        return device
    text = device.strip().lower()
    if text in ("cuda", "gpu"):
        return 0
    for prefix in ("cuda:", "gpu:"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            return int(text[len(prefix) :])
    raise ValueError(f"TensorRT runs on a CUDA device such as 'cuda:0', not {device!r}")


class TensorRTBackend:
    name = "tensorrt"

    def __init__(
        self,
        engine_path: Path | str,
        *,
        max_batch: int = 8,
        device: str | int = "cuda:0",
        num_streams: int = 2,
        cuda_graphs: bool = False,
        engine: Engine | None = None,
    ) -> None:
        index = parse_device(device)
        self._engine = engine if engine is not None else Engine.load(Path(engine_path), device=index)
        try:
            sidecar = self._engine.sidecar
            spec = spec_from_sidecar(sidecar)
            self._runner = TensorRTRunner(
                self._engine, num_streams, output_names=spec.output_names, cuda_graphs=cuda_graphs
            )
        except BaseException:
            if engine is None:
                self._engine.close()
            raise
        profiles = self._engine.profiles
        self._min_batch = min(p.min[0] for p in profiles)
        # The detector splits larger groups into chunks of this size.
        self.max_batch = max(1, min(max_batch, self._runner.max_batch))
        self.spec = spec
        self.device = f"cuda:{index}"
        # The ONNX model the engine was built from identifies the model; the plan is a build of it.
        self.model_sha256 = sidecar.onnx_sha256

    @property
    def runner(self) -> TensorRTRunner:
        return self._runner

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        n = batch.shape[0]
        if n > self.max_batch:
            raise ValueError(f"batch of {n} exceeds max_batch {self.max_batch}")
        if n >= self._min_batch:
            return self._runner.run(batch)
        # An engine whose profiles start above n: pad with copies of the last image, drop the extra.
        pad = np.concatenate([batch, np.repeat(batch[-1:], self._min_batch - n, axis=0)])
        return [out[:n] for out in self._runner.run(pad)]

    def close(self) -> None:
        self._runner.close()
        self._engine.close()
