"""ONNX Runtime on the CPU: the embedded default that needs no GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from facedet_server.model.files import sha256_of
from facedet_server.model.spec import ModelSpec, resolve_spec


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self, model_path: Path, intra_op_threads: int = 0, inter_op_threads: int = 1, max_batch: int = 8
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads  # 0 = ONNX Runtime picks (physical cores)
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.device = self.session.get_providers()[0]
        self.model_sha256 = sha256_of(model_path)
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        self.spec: ModelSpec = resolve_spec(
            dict(self.session.get_modelmeta().custom_metadata_map),
            self.model_sha256,
            inputs[0].name,
            [o.name for o in outputs],
        )
        if "rewritten_by" in self.spec.extra:
            # A rewrite of a pinned file (its shapes made dynamic) is that model: it is named by
            # the sha256 users pin and the registry checks, as a TensorRT plan is by its ONNX.
            self.model_sha256 = self.spec.source_sha256
        # A model with a fixed batch axis runs each image on its own; the batcher still groups
        # requests so one queue serialises the work.
        self.max_batch = max_batch
        self._model_batch = self.spec.batch_size

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._model_batch is None or batch.shape[0] == self._model_batch:
            return list(self.session.run(list(self.spec.output_names), {self.spec.input_name: batch}))
        step = self._model_batch
        parts = [
            self.session.run(list(self.spec.output_names), {self.spec.input_name: batch[i : i + step]})
            for i in range(0, batch.shape[0], step)
        ]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self.spec.output_names))]

    def device_backend(self) -> None:
        """Host batches only: ONNX Runtime runs on the CPU here."""
        return None

    def close(self) -> None:
        del self.session
