"""`facedet detect` and `facedet stream`: the client library behind a command line.

Output: one line per face (human), or with --json JSON Lines: one object per image or frame,
the DetectFacesResponse in the proto JSON mapping plus "file"; a failed one has "file" and
"error": {"code": STATUS_NAME, "message": ...}. Exit status: see EXIT_STATUS (in --help).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.json_format import MessageToDict

from facedet.client import Detection, DetectionOptions, FaceDetectorClient, FaceDetectorError, Status
from facedet.client.channel import read_token_file
from facedet.client.connect import DEFAULT_CONNECT_TIMEOUT
from facedet.client.draw import save_drawing
from facedet.client.errors import NoAnswerError
from facedet.client.health_command import add_parser as add_health_parser
from facedet.client.optional import MissingDependency

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 3
DEFAULT_SERVER = "localhost:50051"
T = TypeVar("T")
DETECT_TIMEOUT = 30.0
EXIT_STATUS = f"""\
exit status:
  0  every image (frame) went well
  1  an image or frame failed: unreadable, not an image, rejected by the server
  2  bad arguments
  3  no FaceDetector answered at --server: nothing listens there (refused), or nothing
     answered within --connect-timeout (default {DEFAULT_CONNECT_TIMEOUT:g} s) or --timeout (the
     whole call, connecting included): "no FaceDetector answered at ADDR within S s\""""


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_health_parser(sub)
    detect = sub.add_parser(
        "detect",
        help="detect faces in images through a server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send each image to a facedet server and print the faces found: one line per\n"
        "face, or with --json one JSON line per image.",
        epilog=EXIT_STATUS,
    )
    detect.add_argument(
        "images",
        nargs="+",
        metavar="IMG",
        help="image files: JPEG and PNG are sent as they are, other formats (BMP, TIFF, WebP, ...) "
        "re-encoded here with OpenCV",
    )
    _add_client_arguments(detect, DETECT_TIMEOUT, "seconds for each image, connecting included")
    detect.add_argument(
        "--json",
        action="store_true",
        help='JSON Lines: per image, the DetectFacesResponse as proto JSON plus "file"; a failed '
        'image is {"file", "error": {"code": "INVALID_ARGUMENT", "message"}}',
    )
    detect.add_argument(
        "--draw",
        metavar="OUT",
        help="write the image with boxes and landmarks to OUT (e.g. out.png); with several images, "
        "OUT is a folder (existing, ending in '/', or without a suffix) receiving STEM.png, "
        "or else a suffix added to each image's name beside it (e.g. _faces.png)",
    )
    detect.set_defaults(func=run_detect)

    # The video tool (video_command.py), imported here: it builds on this module's helpers.
    from facedet.client.video_command import add_stream_parser

    add_stream_parser(sub)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _add_client_arguments(parser: argparse.ArgumentParser, timeout: float | None, timeout_help: str) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("FACEDET_SERVER", DEFAULT_SERVER),
        metavar="ADDR",
        help="HOST:PORT (HOST alone: port 50051), unix:///path.sock, or front ends to spread calls "
        "over (round_robin): ipv4:HOST:PORT,HOST:PORT or unix:/a.sock,/b.sock "
        f"[env FACEDET_SERVER; default {DEFAULT_SERVER}]",
    )
    default = f" (default {timeout:g})" if timeout is not None else ""
    parser.add_argument(
        "--timeout", type=_positive_float, default=timeout, metavar="S", help=timeout_help + default
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for the server to answer at all (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    tls = parser.add_argument_group("security", "TLS and token (docs/security.md)")
    tls.add_argument("--tls-ca", metavar="PEM", help="CA that signed the server's certificate: use TLS")
    tls.add_argument("--tls-cert", metavar="PEM", help="this client's certificate, for mutual TLS")
    tls.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    tls.add_argument(
        "--token-file",
        default=os.environ.get("FACEDET_TOKEN_FILE"),
        metavar="PATH",
        help="file holding the server's bearer token [env FACEDET_TOKEN_FILE]",
    )
    parser.add_argument("--min-confidence", type=float, default=0.0, help="0 = server default (0.5)")
    parser.add_argument("--iou-threshold", type=float, default=0.0, help="0 = server default (0.5)")
    parser.add_argument("--max-faces", type=int, default=0, help="0 = server default")
    parser.add_argument("--min-face-size", type=float, default=0.0, help="pixels; 0 = keep all")
    parser.add_argument(
        "--ignore-exif-orientation",
        action="store_true",
        help="detect in a JPEG's pixels as stored, not in the upright picture its EXIF orientation describes",
    )


def _options(args: argparse.Namespace) -> DetectionOptions:
    return DetectionOptions(
        args.min_confidence,
        args.iou_threshold,
        args.max_faces,
        args.min_face_size,
        args.ignore_exif_orientation,
    )


def _client(args: argparse.Namespace, timeout: float | None) -> FaceDetectorClient:
    return FaceDetectorClient(
        args.server,
        timeout=timeout,
        connect_timeout=args.connect_timeout,
        options=_options(args),
        root_certificates=_read_pem(args.tls_ca),
        certificate_chain=_read_pem(args.tls_cert),
        private_key=_read_pem(args.tls_key),
        token=_read(read_token_file, args.token_file),
    )


def _read_pem(path: str | None) -> bytes | None:
    return _read(lambda p: Path(p).read_bytes(), path)


def _read(reader: Callable[[str], T], path: str | None) -> T | None:
    """`reader(path)`, or None without a path; an unreadable file ends the command (exit 1)."""
    if not path:
        return None
    try:
        return reader(path)
    except OSError as exc:
        raise SystemExit(f"facedet: cannot read {path}: {exc.strerror or exc}") from None


def _no_server(error: FaceDetectorError) -> bool:
    """Whether `error` says that no FaceDetector answered at all (exit 3, stop)."""
    return isinstance(error, NoAnswerError) or error.code == "UNAVAILABLE"


def _unreachable(command: str, target: str, error: FaceDetectorError) -> int:
    what = (
        error.message
        if isinstance(error, NoAnswerError)
        else (f"the server at {target} is not available ({error.message})")
    )
    print(
        f"facedet {command}: {what}; start one with `facedet serve`, or point --server / "
        "FACEDET_SERVER at a running one",
        file=sys.stderr,
    )
    return EXIT_UNREACHABLE


def json_line(file: str, detection: Detection) -> str:
    """One JSON Lines record: the response in the proto JSON mapping plus "file"; a failed one
    is "file" (with "frame_id" on a stream) and "error" with the status code's name."""
    record: dict[str, Any] = {"file": file}
    record.update(MessageToDict(detection.to_proto(), preserving_proto_field_name=True))
    if detection.error is not None:
        record["error"] = {"code": detection.error.code, "message": detection.error.message}
    return json.dumps(record)


def _naming(file: str, message: str) -> str:
    return message if message.startswith(f"{file}: ") else f"{file}: {message}"


def run_detect(args: argparse.Namespace) -> int:
    status = EXIT_OK
    with _client(args, args.timeout) as client:
        for index, image in enumerate(args.images):
            try:
                detection = client.detect(image)
            except FaceDetectorError as exc:
                if _no_server(exc):
                    return _unreachable("detect", client.target, exc)
                message = _naming(image, exc.message)
                print(f"facedet detect: {exc.code}: {message}", file=sys.stderr)
                if args.json:
                    failed = Detection((), 0, 0, error=Status(exc.code, message))
                    print(json_line(image, failed), flush=True)
                status = EXIT_FAILED
                continue
            if args.draw:
                out = _drawing_path(args.draw, image, index, args.images)
                status = max(status, _draw(image, detection, out))
            if args.json:
                print(json_line(image, detection), flush=True)
            else:
                _print_faces(image, detection)
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
    except (OSError, ValueError, MissingDependency, FaceDetectorError) as exc:
        print(f"facedet detect: cannot draw {image} to {out}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
