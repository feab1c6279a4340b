"""Fuzz the request path: protobuf parse -> proto mapping -> image decode -> host prepare.

`python -m facedet_bench.fuzz_request --seconds N [--runs N] [--seed S]` runs atheris
(libFuzzer) over a seed corpus of valid requests. A `DetectError` is how the server answers a
bad request, so it is an expected outcome; any other exception is a crash, and libFuzzer writes
the input that caused it (`crash-*`) to the working directory.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from facedet.v1 import face_detector_pb2 as pb
from facedet_server.app.config import ServerConfig
from facedet_server.app.server import limits_for
from facedet_server.errors import DetectError
from facedet_server.faces.options import Options
from facedet_server.model.spec import UPSTREAM_YOLOV5N_05
from facedet_server.pipeline.host import HostPreparer
from facedet_server.serving.service import request_options
from facedet_server.transport.grpc.messages import image_from_request, options_from_request
from google.protobuf.message import DecodeError

# Seeds are shrunk to thumbnails: the fuzzer mutates bytes, and small images keep each run
# cheap without losing the JPEG/PNG structure it needs to reach the decoder's deeper paths.
SEED_SIDE = 64
OUR_PACKAGES = ("facedet_server.", "facedet.v1.")


def make_target() -> Callable[[bytes], None]:
    """The fuzz target: one request's bytes through what the servicer does before inference."""
    config = ServerConfig()
    limits = limits_for(config)
    defaults = Options(config.min_confidence, config.iou_threshold, config.max_faces, 0.0)
    preparer = HostPreparer(UPSTREAM_YOLOV5N_05, limits)

    def target(data: bytes) -> None:
        request = pb.DetectFacesRequest()
        try:
            request.ParseFromString(data)
        except DecodeError:
            return  # grpc refuses such a message before the servicer sees it
        try:
            options = request_options(defaults, options_from_request(request), limits.max_faces)
            preparer.prepare(image_from_request(request), options)
        except DetectError:
            pass

    return target


def seed_requests(shared: Path | None) -> list[bytes]:
    """Valid requests (thumbnails of the shared images as JPEG and PNG), raw frames, an empty one."""
    seeds: list[bytes] = [b"", pb.DetectFacesRequest().SerializeToString()]
    for path in sorted(shared.glob("*.jpg"))[:3] if shared else []:
        pixels = cv2.imread(str(path))
        if pixels is None:
            continue
        scale = SEED_SIDE / max(pixels.shape[:2])
        small = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        for ext in (".jpg", ".png"):
            ok, encoded = cv2.imencode(ext, small)
            if ok:
                seeds.append(pb.DetectFacesRequest(encoded=encoded.tobytes()).SerializeToString())
    frame = np.full((8, 6, 3), 114, np.uint8)
    for fmt, channels in ((pb.PIXEL_FORMAT_RGB8, 3), (pb.PIXEL_FORMAT_BGR8, 3), (pb.PIXEL_FORMAT_GRAY8, 1)):
        raw = pb.RawImage(width=6, height=8, format=fmt, data=frame[..., :channels].tobytes())
        options = pb.DetectionOptions(min_confidence=0.3, max_faces=5, min_face_size=2.0)
        seeds.append(pb.DetectFacesRequest(raw=raw, options=options).SerializeToString())
    return seeds


def instrument_our_code(instrument: Callable[[Callable[..., object]], object]) -> None:
    """Coverage feedback from our own functions only: instrumenting everything loaded (atheris's
    `instrument_all`, NumPy and protobuf included) costs ~40 s before the first run."""
    for obj in gc.get_objects():
        module = getattr(obj, "__module__", None)
        if (
            isinstance(obj, types.FunctionType)
            and isinstance(module, str)
            and module.startswith(OUR_PACKAGES)
        ):
            instrument(obj)


def write_corpus(folder: Path, seeds: list[bytes]) -> None:
    for index, seed in enumerate(seeds):
        (folder / f"seed-{index:03d}").write_bytes(seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m facedet_bench.fuzz_request", description=__doc__)
    parser.add_argument("--seconds", type=int, default=60, help="time budget (libFuzzer -max_total_time)")
    parser.add_argument("--runs", type=int, default=-1, help="stop after this many inputs (-1: no limit)")
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer's random seed (0: random)")
    parser.add_argument("--corpus", type=Path, help="corpus folder to grow (default: a temporary one)")
    args = parser.parse_args(argv)

    import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]

    target = make_target()
    instrument_our_code(atheris.instrument_func)
    shared = os.environ.get("FACEDET_SHARED")
    with tempfile.TemporaryDirectory(prefix="facedet-fuzz-") as scratch:
        corpus = args.corpus or Path(scratch)
        corpus.mkdir(parents=True, exist_ok=True)
        write_corpus(corpus, seed_requests(Path(shared) / "images" if shared else None))
        fuzzer_argv = [
            sys.argv[0],
            f"-max_total_time={args.seconds}",
            f"-runs={args.runs}",
            f"-seed={args.seed}",
            "-max_len=65536",
            str(corpus),
        ]
        atheris.Setup(fuzzer_argv, target)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
