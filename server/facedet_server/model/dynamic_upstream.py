"""The frozen upstream export made dynamic, with the `onnx` package alone (no torch).

`yolov5n-0.5.onnx` as published takes batch 1 at 640x640 only: its channel shuffles reshape to
constants such as (1, 2, 32, 80, 80) and back to (1, -1, 80, 80). Every other shape in the graph
(the heads' reshapes, the channel splits, the upsampling) is already computed from the tensors it
runs on. Rewriting those shuffle constants as shapes read from the input at run time, and the
graph's inputs and outputs as symbolic, gives a graph that takes any batch and any height and
width that are multiples of 32, with the same weights and arithmetic. So a 16:9 frame runs at
640x384 instead of 640x640, and a batch runs as one call, on a machine without torch.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from facedet_server.model.spec import UPSTREAM_YOLOV5N_05, ModelSpec

REWRITER = "facedet_server.model.dynamic_upstream 1"


class RewriteError(ValueError):
    """The graph is not the upstream layout this rewrite knows; the message says what differs."""


def dynamic_spec(source: ModelSpec = UPSTREAM_YOLOV5N_05) -> ModelSpec:
    """The upstream spec with its batch and input size left open."""
    return dataclasses.replace(
        source,
        input_height=None,
        input_width=None,
        batch_size=None,
        extra={**source.extra, "rewritten_by": REWRITER},
    )


def _constant_values(graph: Any) -> dict[str, list[int]]:
    """Output name -> values of every small int64 Constant node and initializer."""
    from onnx import numpy_helper

    values: dict[str, list[int]] = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            array = numpy_helper.to_array(node.attribute[0].t)
            if array.ndim == 1 and array.dtype.kind == "i":
                values[node.output[0]] = [int(v) for v in array]
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if array.ndim == 1 and array.dtype.kind == "i":
            values[init.name] = [int(v) for v in array]
    return values


def rewrite(model: Any) -> int:
    """Make `model` (an onnx.ModelProto of the upstream layout) dynamic in place; returns how many
    reshapes were rewritten. Raises RewriteError for a graph this rewrite does not know."""
    from onnx import TensorProto, helper

    graph = model.graph
    constants = _constant_values(graph)
    new_nodes = []
    rewritten = 0
    for node in graph.node:
        target = constants.get(node.input[1]) if node.op_type == "Reshape" else None
        # Shuffle split: (N, C, H, W) -> (1, groups, C/groups, H, W); merge: (N, C/g, g, H, W) ->
        # (1, -1, H, W). A leading 1 with fixed spatial sizes is what the export baked in.
        if target is None or target[0] != 1 or len(target) not in (4, 5):
            new_nodes.append(node)
            continue
        x, name = node.input[0], node.name or f"reshape_{rewritten}"
        shape, n_dim, spatial = f"{name}_shape", f"{name}_n", f"{name}_hw"
        if len(target) == 5:
            middle = helper.make_tensor(f"{name}_mid", TensorProto.INT64, [2], [target[1], -1])
            spatial_from, spatial_to = 2, 4
        elif target[1] == -1:
            middle = helper.make_tensor(f"{name}_mid", TensorProto.INT64, [1], [-1])
            spatial_from, spatial_to = 3, 5
        else:
            raise RewriteError(f"{name}: unexpected fixed reshape to {target}")
        ints = {"zero": [0], "one": [1], "from": [spatial_from], "to": [spatial_to]}
        for key, value in ints.items():
            graph.initializer.append(helper.make_tensor(f"{name}_{key}", TensorProto.INT64, [1], value))
        graph.initializer.append(middle)
        new_nodes += [
            helper.make_node("Shape", [x], [shape], name=f"{name}_Shape"),
            helper.make_node(
                "Slice", [shape, f"{name}_zero", f"{name}_one"], [n_dim], name=f"{name}_SliceN"
            ),
            helper.make_node(
                "Slice", [shape, f"{name}_from", f"{name}_to"], [spatial], name=f"{name}_SliceHW"
            ),
            helper.make_node(
                "Concat", [n_dim, f"{name}_mid", spatial], [f"{name}_target"], axis=0, name=f"{name}_Concat"
            ),
            helper.make_node("Reshape", [x, f"{name}_target"], list(node.output), name=name),
        ]
        rewritten += 1
    if rewritten == 0:
        raise RewriteError(
            "no fixed-size channel-shuffle reshapes found: not the upstream yolov5n-0.5 layout"
        )
    # The replaced shape constants are now read by nothing: leave them out.
    used = {name for node in new_nodes for name in node.input} | {v.name for v in graph.output}
    new_nodes = [n for n in new_nodes if n.op_type != "Constant" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(new_nodes)
    # Shapes recorded for intermediate tensors are the 640x640 ones: drop them, ONNX Runtime
    # infers them again for each input shape.
    del graph.value_info[:]
    for value, dims in [(v, ("batch", None, "height", "width")) for v in graph.input] + [
        (v, ("batch", None, f"{v.name}_h", f"{v.name}_w", None)) for v in graph.output
    ]:
        for dim, param in zip(value.type.tensor_type.shape.dim, dims, strict=False):
            if param is not None:
                dim.ClearField("dim_value")
                dim.dim_param = param
    return rewritten


def make_dynamic(src: Path, dst: Path, spec: ModelSpec = UPSTREAM_YOLOV5N_05) -> ModelSpec:
    """Write the dynamic version of the upstream file `src` to `dst` (atomically), describing
    itself in its metadata; returns its spec."""
    import onnx

    model = onnx.load(str(src))
    rewrite(model)
    result = dynamic_spec(spec)
    del model.metadata_props[:]
    for key, value in result.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # Several processes of one server may make it at once: each writes its own file, and the
    # rename makes whichever lands last the one read.
    partial = dst.with_name(f"{dst.name}.{os.getpid()}.partial")
    onnx.save(model, str(partial))
    partial.replace(dst)
    return result


def is_current(path: Path, source_sha256: str) -> bool:
    """True when `path` is this rewrite's output for the upstream file of that sha256."""
    from facedet_server.model.onnx_metadata import read_spec

    if not path.is_file():
        return False
    try:
        spec = read_spec(path)
    except Exception:  # a truncated or foreign file is simply made again
        return False
    return (
        spec is not None
        and spec.source_sha256 == source_sha256
        and spec.extra.get("rewritten_by") == REWRITER
    )
