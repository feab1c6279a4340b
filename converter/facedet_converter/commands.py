"""`facedet convert`: weights (upstream ONNX export, upstream .pt checkpoint, ncnn .param + .bin,
or our export) -> our dynamic-shape ONNX, and optionally a TensorRT engine with its sidecar.

Importing this module is cheap (no torch, no onnx): the `facedet` command builds its parser from
it on every start.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facedet_converter.engine_plan import BuildPlan, EngineOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Import YOLOv5-Face weights into facedet's PyTorch model and export ONNX with dynamic batch, "
        "height and width and decoding inside the graph; optionally build a TensorRT engine from it. "
        "Needs the convert extra (pip install 'facedet[convert]'); engines need the TensorRT builder "
        "(10.x or 11.x) and an NVIDIA GPU."
    )
    parser.add_argument(
        "--weights",
        required=True,
        type=Path,
        metavar="FILE",
        help="upstream ONNX export (e.g. yolov5n-0.5.onnx), upstream training checkpoint (.pt), ncnn graph "
        "(.param, its .bin beside it; e.g. yolov5n-face's yolov5n.param), or our ONNX",
    )
    parser.add_argument(
        "--config",
        metavar="NAME",
        help="model config (yolov5n-0.5, yolov5n, yolov5n-face, yolov5s, yolov5m, yolov5l, yolov5n6, "
        "yolov5s6, yolov5m6, yolov5l6); default: recognised from the weights",
    )
    out = parser.add_argument_group("ONNX")
    out.add_argument("--onnx", type=Path, metavar="OUT", help="write our float32 ONNX export here")
    out.add_argument(
        "--onnx-fp16",
        type=Path,
        metavar="OUT",
        help="also write a float16 export (float32 I/O); TensorRT 11 builds FP16 engines from it",
    )
    out.add_argument("--opset", type=int, default=None, help="ONNX opset (default and minimum 18)")
    out.add_argument(
        "--no-check",
        action="store_true",
        help="skip running the export in ONNX Runtime against PyTorch at several batch sizes and shapes",
    )
    trt = parser.add_argument_group("TensorRT engine")
    trt.add_argument(
        "--engine", type=Path, metavar="OUT", help="build a serialized TensorRT engine (plan) here"
    )
    precision = trt.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="FP16 engine")
    precision.add_argument(
        "--int8", action="store_true", help="INT8 engine (TensorRT 10.x only), calibrated on --calib images"
    )
    trt.add_argument(
        "--calib", type=Path, metavar="DIR", help="folder of representative JPEG/PNG images for --int8"
    )
    trt.add_argument(
        "--calib-batches", type=int, default=64, metavar="N", help="calibrate on at most N batches"
    )
    trt.add_argument(
        "--calib-cache", type=Path, metavar="FILE", help="INT8 calibration cache (default <engine>.calib)"
    )
    for name, default in (("min", "1x3x32x32"), ("opt", "1x3x640x640"), ("max", "8x3x640x640")):
        trt.add_argument(
            f"--{name}-shape",
            action="append",
            metavar="NxCxHxW",
            help=f"{name} input shape of an optimization profile; repeat all three for several profiles "
            f"(default: one profile, {name} {default})",
        )
    trt.add_argument(
        "--timing-cache",
        type=Path,
        metavar="FILE",
        help="persistent builder timing cache (default $FACEDET_HOME/tensorrt/timing-<trt>-<gpu>.cache)",
    )
    trt.add_argument(
        "--version-compatible",
        action="store_true",
        help="engine runs on later TensorRT releases of its major version and on the lean runtime",
    )
    trt.add_argument(
        "--exclude-lean-runtime",
        action="store_true",
        help="with --version-compatible: leave the lean runtime out of the plan (the host provides it)",
    )
    trt.add_argument(
        "--hardware-compatible",
        action="store_true",
        help="engine runs on any Ampere or newer GPU, not only the one that built it (a little slower)",
    )
    trt.add_argument("--workspace", type=int, metavar="MIB", help="builder workspace limit in MiB")


def run(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        print(
            f"facedet convert: {exc.name} is not installed; "
            "install the convert extra: pip install 'facedet[convert]'",
            file=sys.stderr,
        )
        return 2
    if args.onnx is None and args.engine is None and args.onnx_fp16 is None:
        print(
            "facedet convert: nothing to do; give --onnx OUT.onnx and/or --engine OUT.plan", file=sys.stderr
        )
        return 2
    try:
        return _convert(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"facedet convert: {exc}", file=sys.stderr)
        return 1


def _convert(args: argparse.Namespace) -> int:
    from facedet_nn.model import count_parameters
    from facedet_server.model.network import size_multiple
    from facedet_server.runtime.torch_model import load_network

    from facedet_converter.engine_plan import make_profiles
    from facedet_converter.export import (
        DEFAULT_OPSET,
        check_onnx,
        export_onnx,
        spec_for_weights,
    )

    opset = args.opset or DEFAULT_OPSET
    options = _engine_options(args) if args.engine else None
    # Fail fast on an engine that cannot be built here, before minutes of export and checking.
    plan = _plan_engine(options) if options is not None else None

    started = time.monotonic()
    model = load_network(args.weights, args.config)
    multiple = size_multiple(model)
    print(
        f"{args.weights.name}: {model.config.name}, {count_parameters(model) / 1e6:.3f} M parameters (fused)"
    )
    if options is not None:
        # Now that the model's stride is known (64 for the P6 models), check the shapes against it.
        profiles = make_profiles(args.min_shape, args.opt_shape, args.max_shape, multiple)
        options = replace(options, profiles=tuple(profiles))

    wanted = {"fp32": args.onnx, "fp16": args.onnx_fp16}
    with tempfile.TemporaryDirectory(prefix="facedet-convert-") as scratch:
        paths: dict[str, Path] = {}
        for precision, requested in wanted.items():
            if requested is None and (plan is None or plan.onnx_precision != precision):
                continue
            dst = requested or Path(scratch) / f"model-{precision}.onnx"
            spec = spec_for_weights(model, args.weights, precision=precision, opset=opset)
            export_onnx(model, dst, spec, half=precision == "fp16", opset=opset)
            paths[precision] = dst
            inside = "float32" if precision == "fp32" else "float16 inside, float32 input and output"
            print(
                f"exported {dst}: opset {opset}, {inside}; "
                f"input {spec.input_name} (N, 3, H, W), H and W multiples of {multiple}"
            )
            if precision == "fp32" and not args.no_check:
                for result in check_onnx(dst, model):
                    print(
                        f"  ONNX Runtime vs PyTorch at {result.shape}: max |diff| {result.max_abs_diff:.2g}"
                    )
        if options is not None and plan is not None:
            from facedet_converter.tensorrt_build import build_engine

            spec = spec_for_weights(model, args.weights, precision=plan.onnx_precision, opset=opset)
            build_engine(paths, args.engine, spec, options)
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


def _engine_options(args: argparse.Namespace) -> EngineOptions:
    from facedet_converter.engine_plan import EngineOptions, Precision, make_profiles

    precision: Precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    if args.calib and not args.int8:
        raise ValueError("--calib is only used with --int8")
    return EngineOptions(
        precision=precision,
        profiles=tuple(make_profiles(args.min_shape, args.opt_shape, args.max_shape)),
        calib_dir=args.calib,
        calib_batches=args.calib_batches,
        calib_cache=args.calib_cache,
        timing_cache=args.timing_cache,
        version_compatible=args.version_compatible,
        exclude_lean_runtime=args.exclude_lean_runtime,
        hardware_compatible=args.hardware_compatible,
        workspace_mib=args.workspace,
    )


def _plan_engine(options: EngineOptions) -> BuildPlan:
    from facedet_converter.engine_plan import EngineBuildError, plan_build
    from facedet_converter.tensorrt_build import tensorrt_version

    version = tensorrt_version()
    if version is None:
        raise EngineBuildError(
            "--engine needs the TensorRT Python builder (pip install tensorrt, 10.x or 11.x) on a machine "
            "with an NVIDIA GPU; export --onnx here and build the engine there"
        )
    if options.calib_dir is not None and not Path(options.calib_dir).is_dir():
        raise EngineBuildError(f"calibration folder {options.calib_dir} does not exist")
    return plan_build(options, version)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    convert = sub.add_parser("convert", help="import upstream weights, export ONNX, build TensorRT engines")
    add_arguments(convert)
    convert.set_defaults(func=run)
