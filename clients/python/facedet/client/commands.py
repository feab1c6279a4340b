"""`facedet detect` and `facedet stream`: the client library behind a command line.

Exit status: 0 all went well; 1 an image or frame failed (unreadable, rejected by the server);
3 the server is unreachable or not serving. (argparse uses 2 for bad arguments.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from facedet.client import Detection, DetectionOptions, FaceDetectorClient, FaceDetectorError, Frame, Status
from facedet.client.draw import save_drawing
from facedet.client.frames import folder_frames, video_frames

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 3
DEFAULT_SERVER = "localhost:50051"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    detect = sub.add_parser(
        "detect",
        help="detect faces in images through a server",
        description="Send each image to a facedet server and print the faces found: one line per "
        "face, or with --json the response in the proto's JSON mapping.",
    )
    detect.add_argument("images", nargs="+", metavar="IMG", help="JPEG or PNG files (others via OpenCV)")
    _add_client_arguments(detect)
    detect.add_argument(
        "--json",
        action="store_true",
        help="print DetectFacesResponse as proto JSON: an object for one image, a list for several "
        "(a failed image is an object with only `error`, as on a stream)",
    )
    detect.add_argument(
        "--draw",
        metavar="OUT",
        help="write the image with boxes and landmarks to OUT (e.g. out.png); with several images, "
        "OUT is a folder (existing, ending in '/', or without a suffix) receiving STEM.png, "
        "or else a suffix added to each image's name beside it (e.g. _faces.png)",
    )
    detect.set_defaults(func=run_detect)

    stream = sub.add_parser(
        "stream",
        help="detect faces in a video or a folder of images over one stream",
        description="Stream a video's frames (decoded here with OpenCV, sent as raw BGR, or JPEG with "
        "--jpeg) or a folder's JPEG/PNG files (in name order) to a server over StreamDetectFaces, "
        "printing each frame's face count and a summary.",
    )
    stream.add_argument("source", metavar="VIDEO_OR_DIR", help="a video file or a folder of images")
    _add_client_arguments(stream)
    stream.add_argument("--json", action="store_true", help="print one proto-JSON response per line")
    stream.add_argument("--every", type=_positive_int, default=1, metavar="N", help="send every Nth frame")
    stream.add_argument("--max-frames", type=_positive_int, metavar="N", help="stop after sending N frames")
    stream.add_argument(
        "--jpeg",
        type=int,
        nargs="?",
        const=90,
        metavar="QUALITY",
        help="send video frames JPEG-encoded (default quality 90) instead of raw BGR pixels",
    )
    stream.set_defaults(func=run_stream)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("FACEDET_SERVER", DEFAULT_SERVER),
        metavar="ADDR",
        help="HOST:PORT, unix:///path.sock, or front ends to spread calls over (round_robin): "
        f"ipv4:HOST:PORT,HOST:PORT or unix:/a.sock,/b.sock [env FACEDET_SERVER; default {DEFAULT_SERVER}]",
    )
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds per request")
    parser.add_argument("--min-confidence", type=float, default=0.0, help="0 = server default (0.5)")
    parser.add_argument("--iou-threshold", type=float, default=0.0, help="0 = server default (0.5)")
    parser.add_argument("--max-faces", type=int, default=0, help="0 = server default")
    parser.add_argument("--min-face-size", type=float, default=0.0, help="pixels; 0 = keep all")


def _options(args: argparse.Namespace) -> DetectionOptions:
    return DetectionOptions(args.min_confidence, args.iou_threshold, args.max_faces, args.min_face_size)


def _unreachable(command: str, server: str, message: str) -> int:
    print(
        f"facedet {command}: the server at {server} is not available ({message}); start one with "
        "`facedet serve`, or point --server / FACEDET_SERVER at a running one",
        file=sys.stderr,
    )
    return EXIT_UNREACHABLE


def run_detect(args: argparse.Namespace) -> int:
    outputs: list[dict[str, Any]] = []
    status = EXIT_OK
    with FaceDetectorClient(args.server, timeout=args.timeout, options=_options(args)) as client:
        for index, image in enumerate(args.images):
            try:
                detection = client.detect(image)
            except OSError as exc:
                print(f"facedet detect: cannot read {image}: {exc.strerror or exc}", file=sys.stderr)
                detection = Detection((), 0, 0, error=Status("INVALID_ARGUMENT", f"cannot read {image}"))
            except FaceDetectorError as exc:
                if exc.code == "UNAVAILABLE":
                    return _unreachable("detect", args.server, exc.message)
                print(f"facedet detect: {image}: {exc.code}: {exc.message}", file=sys.stderr)
                detection = Detection((), 0, 0, error=Status(exc.code, exc.message))
            if detection.error is not None:
                status = EXIT_FAILED
            elif args.draw:
                out = _drawing_path(args.draw, image, index, args.images)
                status = max(status, _draw(image, detection, out))
            if args.json:
                outputs.append(MessageToDict(detection.to_proto(), preserving_proto_field_name=True))
            elif detection.error is None:
                _print_faces(image, detection)
    if args.json:
        print(json.dumps(outputs[0] if len(args.images) == 1 else outputs, indent=2))
    return status


def _print_faces(image: str, detection: Detection) -> None:
    timing = detection.timing
    count = len(detection.faces)
    print(
        f"{image}: {count} face{'s' if count != 1 else ''} in {detection.image_width}x"
        f"{detection.image_height} (server {timing.total_us / 1000:.1f} ms)"
    )
    for rank, face in enumerate(detection.faces, 1):
        box = face.box
        print(
            f"  {rank:3d}  confidence {face.confidence:.3f}  box {box.x_min:.0f},{box.y_min:.0f} "
            f"{box.x_max:.0f},{box.y_max:.0f}  ({box.width:.0f}x{box.height:.0f})"
        )


def _drawing_path(out: str, image: str, index: int, images: Sequence[str]) -> Path:
    """Where --draw OUT puts the drawing of `image`, the `index`-th of `images` (see --help)."""
    target = Path(out)
    folder = target.is_dir() or out.endswith(("/", os.sep)) or (len(images) > 1 and not target.suffix)
    stem = Path(image).stem
    if folder:
        duplicate = [Path(other).stem for other in images].count(stem) > 1
        return target / (f"{stem}-{index}.png" if duplicate else f"{stem}.png")
    if len(images) == 1:
        return target
    return Path(image).with_name(stem + out)


def _draw(image: str, detection: Detection, out: Path) -> int:
    try:
        save_drawing(image, detection, out)
    except (OSError, ValueError) as exc:
        print(f"facedet detect: cannot draw {image} to {out}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def run_stream(args: argparse.Namespace) -> int:
    try:
        frames = _frames(args)
    except (OSError, ValueError) as exc:
        print(f"facedet stream: {exc}", file=sys.stderr)
        return EXIT_FAILED
    summary_to = sys.stderr if args.json else sys.stdout
    sent = faces = failed = 0
    start = time.perf_counter()
    with FaceDetectorClient(args.server, options=_options(args)) as client:
        try:
            for detection in client.stream(frames):
                sent += 1
                if args.json:
                    print(json.dumps(MessageToDict(detection.to_proto(), preserving_proto_field_name=True)))
                elif detection.error is not None:
                    print(f"frame {detection.frame_id}: {detection.error.code}: {detection.error.message}")
                else:
                    count = len(detection.faces)
                    print(f"frame {detection.frame_id}: {count} face{'s' if count != 1 else ''}")
                if detection.error is not None:
                    failed += 1
                else:
                    faces += len(detection.faces)
        except FaceDetectorError as exc:
            if exc.code == "UNAVAILABLE":
                return _unreachable("stream", args.server, exc.message)
            hint = "; try --jpeg to send smaller frames" if exc.code == "RESOURCE_EXHAUSTED" else ""
            print(f"facedet stream: stream failed: {exc.code}: {exc.message}{hint}", file=sys.stderr)
            return EXIT_FAILED
        except (OSError, ValueError) as exc:
            print(f"facedet stream: after {sent} frames: {exc}", file=sys.stderr)
            return EXIT_FAILED
    elapsed = time.perf_counter() - start
    print(
        f"{sent} frames, {faces} faces, {failed} failed in {elapsed:.2f} s: {sent / elapsed:.1f} frames/s",
        file=summary_to,
    )
    return EXIT_FAILED if failed else EXIT_OK


def _frames(args: argparse.Namespace) -> Iterator[Frame]:
    source = Path(args.source)
    if source.is_dir():
        return folder_frames(source, args.every, args.max_frames)
    if not source.exists():
        raise FileNotFoundError(f"no such video file or folder: {source}")
    return video_frames(source, args.every, args.max_frames, jpeg_quality=args.jpeg)
