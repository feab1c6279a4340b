"""`facedet stream SOURCE`: a video file, a network stream, a camera or a folder of images
through one StreamDetectFaces call, in file or live mode, printing faces per frame and writing
the video back with the faces drawn or blurred (video_pipeline.py says how frames flow)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToDict

from facedet.client import Detection, FaceDetectorError, Status
from facedet.client.anonymise import DEFAULT_PADDING, anonymise_faces
from facedet.client.commands import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STATUS,
    _add_client_arguments,
    _client,
    _naming,
    _no_server,
    _positive_float,
    _positive_int,
    _unreachable,
    json_line,
)
from facedet.client.draw import draw_detection
from facedet.client.frame_transport import (
    DEFAULT_JPEG_QUALITY,
    TRANSPORTS,
    Transport,
    default_transport,
    frame_payload,
)
from facedet.client.optional import MissingDependency
from facedet.client.progress_line import ProgressLine
from facedet.client.video_output import VideoWriter
from facedet.client.video_pipeline import DEFAULT_WINDOW, MODES, Fate, FrameResult, Mode, VideoStream
from facedet.client.video_source import DEFAULT_FOLDER_FPS, DEFAULT_OPEN_TIMEOUT, open_source

if TYPE_CHECKING:
    import numpy as np

DESCRIPTION = """\
Stream a video file, a network stream (rtsp://, http(s)://, udp://, ...), a camera (/dev/videoN)
or a folder of JPEG/PNG files (in name order) to a server over one StreamDetectFaces call, and
print each frame's faces and a summary, or with --json one JSON line per frame. Videos, streams
and cameras are decoded with PyAV (pip install 'facedet-client[video]').

modes:
  file  every frame is sent, as fast as the server answers, at most --window frames in flight
        (the default for files and folders)
  live  frames are released as a network stream or camera delivers them (a file's at the pace
        of their timestamps); when the server falls behind, a frame not yet sent when a newer
        one is due is dropped (and counted), and the server is asked to skip stale frames too
        (the default for network streams and cameras)

--output OUT.mp4 writes every frame back (with --draw: boxes and landmarks; with --blur: each
face anonymised) at the input's timestamps: a frame that was dropped or skipped shows the
latest faces found before it."""


def add_stream_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stream = sub.add_parser(
        "stream",
        help="detect faces in a video, a network stream, a camera or a folder of images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
        epilog=EXIT_STATUS,
    )
    stream.add_argument(
        "source", metavar="SOURCE", help="a video file, a stream URL, a camera device or a folder of images"
    )
    _add_client_arguments(stream, None, "seconds for the whole stream, connecting included (default: none)")
    stream.add_argument(
        "--json",
        action="store_true",
        help='JSON Lines, one per frame: the DetectFacesResponse as proto JSON plus "file", and for '
        'videos "index" and "timestamp" (seconds); a dropped frame has "dropped": true; the '
        "summary goes to stderr",
    )
    stream.add_argument("--mode", choices=MODES, help="file or live (above); default by the kind of source")
    stream.add_argument(
        "--window",
        type=_positive_int,
        metavar="N",
        help=f"most frames in flight (default {DEFAULT_WINDOW['file']} in file mode, "
        f"{DEFAULT_WINDOW['live']} in live mode)",
    )
    stream.add_argument("--every", type=_positive_int, default=1, metavar="N", help="send every Nth frame")
    stream.add_argument("--max-frames", type=_positive_int, metavar="N", help="stop after N frames")
    wire = stream.add_argument_group("transport")
    wire.add_argument(
        "--transport",
        choices=TRANSPORTS,
        help="video frames as JPEG or raw BGR pixels (default: raw over a unix socket, jpeg over "
        "TCP; a folder's files go as they are with jpeg)",
    )
    wire.add_argument(
        "--jpeg-quality",
        type=int,
        choices=range(1, 101),
        default=DEFAULT_JPEG_QUALITY,
        metavar="Q",
        help=f"JPEG quality, 1-100 (default {DEFAULT_JPEG_QUALITY})",
    )
    wire.add_argument(
        "--jpeg",
        type=int,
        nargs="?",
        const=DEFAULT_JPEG_QUALITY,
        metavar="Q",
        help="the same as --transport jpeg --jpeg-quality Q",
    )
    out = stream.add_argument_group("output")
    out.add_argument("--output", metavar="OUT.mp4", help="write the video back (H.264) with --draw or --blur")
    out.add_argument("--draw", action="store_true", help="draw boxes, landmarks and confidences")
    out.add_argument("--blur", action="store_true", help="anonymise each face (a padded box, mosaic)")
    out.add_argument(
        "--blur-padding",
        type=float,
        default=DEFAULT_PADDING,
        metavar="F",
        help=f"grow each box by F of its size on every side before blurring (default {DEFAULT_PADDING})",
    )
    source = stream.add_argument_group("source")
    source.add_argument(
        "--fps",
        type=_positive_float,
        default=DEFAULT_FOLDER_FPS,
        help=f"a folder's frame rate, for live pacing and --output (default {DEFAULT_FOLDER_FPS:g})",
    )
    source.add_argument(
        "--input-format", metavar="FMT", help="FFmpeg input format (default: guessed; v4l2 for /dev/video*)"
    )
    source.add_argument(
        "--input-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an FFmpeg input option, e.g. rtsp_transport=tcp or video_size=1280x720 (repeatable)",
    )
    source.add_argument(
        "--open-timeout",
        type=_positive_float,
        default=DEFAULT_OPEN_TIMEOUT,
        metavar="S",
        help=f"seconds for a network stream or camera to open and for each read (default "
        f"{DEFAULT_OPEN_TIMEOUT:g})",
    )
    stream.set_defaults(func=run_stream)


def run_stream(args: argparse.Namespace) -> int:
    if (args.draw or args.blur) and not args.output:
        print("facedet stream: --draw and --blur need --output OUT.mp4", file=sys.stderr)
        return EXIT_FAILED
    try:
        options = _input_options(args.input_option)
        info, frames = open_source(
            args.source,
            folder_fps=args.fps,
            input_format=args.input_format,
            input_options=options,
            open_timeout=args.open_timeout,
        )
    except (OSError, ValueError, MissingDependency) as exc:
        print(f"facedet stream: {exc}", file=sys.stderr)
        return EXIT_FAILED
    mode: Mode = args.mode or ("live" if info.real_time else "file")
    writer = VideoWriter(args.output, info.time_base, info.rate) if args.output else None
    summary_to = sys.stderr if args.json else sys.stdout
    progress = ProgressLine(sys.stderr)
    latencies: list[float] = []
    start = time.perf_counter()
    with _client(args, None) as client:
        transport: Transport = "jpeg" if args.jpeg else (args.transport or default_transport(client.target))
        quality = args.jpeg or args.jpeg_quality
        video = VideoStream(
            client,
            frames,
            lambda frame: frame_payload(frame, transport, quality),
            mode=mode,
            window=args.window,
            every=args.every,
            max_frames=args.max_frames,
            timeout=args.timeout,
            paced_by_source=info.real_time,
        )
        stats = video.stats
        answered = 0
        try:
            for result in video.results():
                if writer is not None:
                    writer.write(_picture(result, args), result.frame.pts)
                if result.fate is Fate.SKIPPED:
                    continue
                answered += 1
                if result.fate is Fate.DETECTED and result.latency is not None:
                    latencies.append(result.latency)
                _report(result, args, info.kind, progress)
                progress.update(answered, stats.dropped, stats.failed)
        except FaceDetectorError as exc:
            progress.finish()
            if _no_server(exc) and not answered:
                return _unreachable("stream", client.target, exc)
            hint = "; try --transport jpeg to send smaller frames" if exc.code == "RESOURCE_EXHAUSTED" else ""
            print(f"facedet stream: stream failed: {exc.code}: {exc.message}{hint}", file=sys.stderr)
            return EXIT_FAILED
        except (OSError, ValueError, MissingDependency) as exc:
            progress.finish()
            print(f"facedet stream: after {answered} frames: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            if writer is not None:
                writer.close()
    progress.finish()
    elapsed = time.perf_counter() - start
    print(_summary(stats.read, stats, mode, elapsed, latencies), file=summary_to)
    return EXIT_FAILED if stats.failed else EXIT_OK


def _input_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--input-option wants KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def _picture(result: FrameResult, args: argparse.Namespace) -> np.ndarray:
    """The frame as --output shows it: blurred and/or drawn with its faces (or the latest ones)."""
    image = result.frame.pixels()
    detection = result.detection
    if detection is None or detection.error is not None:
        return image
    if args.blur:
        image = anonymise_faces(image, detection, args.blur_padding)
    if args.draw:
        image = draw_detection(image, detection)
    return image


def _report(result: FrameResult, args: argparse.Namespace, kind: str, progress: ProgressLine) -> None:
    """The frame's line: JSON (--json) or a human one."""
    frame = result.frame
    if result.fate is Fate.DETECTED:
        assert result.detection is not None
        detection = result.detection
    else:
        detection = Detection((), 0, 0, frame_id=frame.index, dropped=True)
    file = args.source
    if kind == "folder":
        file = frame.file or args.source
        if detection.error is not None:  # a folder's file: name it
            error = Status(detection.error.code, _naming(file, detection.error.message))
            detection = replace(detection, error=error)
    if args.json:
        line = json_line(file, detection) if kind == "folder" else _video_line(file, result, detection)
        print(line, flush=True)
        return
    progress.finish()
    if result.fate.dropped:
        print(f"frame {frame.index}: {result.fate.value}")
    elif detection.error is not None:
        print(f"frame {frame.index}: {detection.error.code}: {detection.error.message}")
    else:
        count = len(detection.faces)
        print(f"frame {frame.index}: {count} face{'s' if count != 1 else ''}")


def _video_line(file: str, result: FrameResult, detection: Detection) -> str:
    record: dict[str, Any] = {"file": file, "index": result.frame.index, "timestamp": result.frame.time}
    record.update(MessageToDict(detection.to_proto(), preserving_proto_field_name=True))
    record.setdefault("faces", [])
    if detection.error is not None:
        record["error"] = {"code": detection.error.code, "message": detection.error.message}
    if result.fate is Fate.DROPPED_BY_SERVER:
        record["dropped_by"] = "server"
    elif result.fate is Fate.DROPPED_HERE:
        record["dropped_by"] = "client"
    return json.dumps(record)


def _summary(frames: int, stats: Any, mode: Mode, elapsed: float, latencies: list[float]) -> str:
    text = f"{frames} frames, {stats.faces} faces, {stats.failed} failed"
    if mode == "live":
        here, server = stats.dropped_here, stats.dropped_by_server
        text += f", {stats.dropped} dropped ({here} here, {server} by the server)"
    text += f" in {elapsed:.2f} s: {frames / max(elapsed, 1e-9):.1f} frames/s"
    if mode == "live" and latencies:
        text += (
            f"; latency p50 {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
        )
    return text
