"""Video frames to the server as JPEG or as raw pixels, over TCP and over a unix socket: what
each costs per frame, to choose `facedet stream`'s default transport (frame_transport.py).

    python -m facedet_bench.video_transport --video ../shared/videos/one_face_640x480.mkv

starts one `facedet serve` listening on a loopback port and a unix socket, decodes the video
once into memory (PyAV), and for each link and transport, in rounds that alternate them:

- one frame at a time over one stream (the latency a live pipeline sees per frame):
  encode (building the request here: JPEG encoding, or copying the pixels), round trip (send ->
  answer), and within it the server's own time (Timing.total_us, of which decode_us is
  decoding the JPEG or checking the raw frame); "wire" is the round trip less the server's
  time: serialising, the socket, deserialising, on both sides; "transport" is what the choice
  of transport costs per frame, free of the model's (noisy) time: encode + decode + wire;
- `facedet stream`'s file mode (VideoStream, a window of 8 frames in flight): frames/s.

Prints a Markdown table of medians and, with --json, the raw figures.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from facedet.client import FaceDetectorClient, build_request
from facedet.client.frame_transport import TRANSPORTS, Transport, frame_payload
from facedet.client.video_pipeline import VideoStream
from facedet.client.video_source import SourceFrame, open_source
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc

from facedet_bench.load import machine, spawned

CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


@dataclass(frozen=True)
class Row:
    link: str  # "tcp" or "unix"
    transport: Transport
    bytes_per_frame: int
    encode_ms: float
    round_trip_ms: float
    server_ms: float
    server_decode_ms: float  # within server_ms: decoding (JPEG) or checking (raw) the frame
    wire_ms: float
    per_frame_ms: float  # encode + round trip
    transport_ms: float  # what the transport itself costs: encode + server decode + wire
    file_mode_fps: float


def decoded(video: Path, frames: int) -> list[np.ndarray]:
    _, source = open_source(str(video))
    images = [frame.pixels() for _, frame in zip(range(frames), source, strict=False)]
    if hasattr(source, "close"):
        source.close()
    if not images:
        raise SystemExit(f"no frames in {video}")
    return images


def one_at_a_time(
    target: str, images: Sequence[np.ndarray], transport: Transport, quality: int
) -> dict[str, list[float]]:
    """Each frame sent only once the last is answered, over one stream."""
    outbox: queue.Queue[pb.DetectFacesRequest | None] = queue.Queue()
    figures: dict[str, list[float]] = {
        key: []
        for key in ("encode", "round_trip", "server", "decode", "wire", "per_frame", "transport", "bytes")
    }
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FaceDetectorStub(channel)
        answers = stub.StreamDetectFaces(iter(outbox.get, None))
        try:
            for index, image in enumerate(images):
                started = time.perf_counter()
                item = frame_payload(_frame(index, image), transport, quality)
                request = build_request(item.image, frame_id=index, pixel_format="BGR8")
                encoded = time.perf_counter()
                outbox.put(request)
                answer = next(answers)
                done = time.perf_counter()
                if answer.HasField("error"):
                    raise SystemExit(f"frame {index} failed: {answer.error.message}")
                server_ms = answer.timing.total_us / 1000
                figures["encode"].append((encoded - started) * 1000)
                figures["round_trip"].append((done - encoded) * 1000)
                figures["server"].append(server_ms)
                figures["decode"].append(answer.timing.decode_us / 1000)
                figures["wire"].append((done - encoded) * 1000 - server_ms)
                figures["per_frame"].append((done - started) * 1000)
                wire_ms = (done - encoded) * 1000 - server_ms
                figures["transport"].append(
                    (encoded - started) * 1000 + answer.timing.decode_us / 1000 + wire_ms
                )
                figures["bytes"].append(float(request.ByteSize()))
        finally:
            outbox.put(None)
            answers.cancel()
    return figures


def file_mode_fps(target: str, images: Sequence[np.ndarray], transport: Transport, quality: int) -> float:
    with FaceDetectorClient(target, channel_options=CHANNEL_OPTIONS) as client:
        frames = (_frame(i, image) for i, image in enumerate(images))
        stream = VideoStream(client, frames, lambda f: frame_payload(f, transport, quality), mode="file")
        started = time.perf_counter()
        count = sum(1 for _ in stream.results())
        return count / (time.perf_counter() - started)


def _frame(index: int, image: np.ndarray) -> SourceFrame:
    return SourceFrame(index, index / 30, index, lambda: image)


def measure(
    targets: dict[str, str], images: Sequence[np.ndarray], quality: int, rounds: int
) -> tuple[list[Row], list[dict[str, Any]]]:
    runs: dict[tuple[str, Transport], list[dict[str, list[float]]]] = {}
    rates: dict[tuple[str, Transport], list[float]] = {}
    raw_runs: list[dict[str, Any]] = []
    for round_index in range(rounds):
        for link, target in targets.items():
            # Alternate which transport goes first, so neither always meets a warmer server.
            order = TRANSPORTS if round_index % 2 == 0 else TRANSPORTS[::-1]
            for transport in order:
                figures = one_at_a_time(target, images, transport, quality)
                fps = file_mode_fps(target, images, transport, quality)
                runs.setdefault((link, transport), []).append(figures)
                rates.setdefault((link, transport), []).append(fps)
                raw_runs.append({"round": round_index, "link": link, "transport": transport, "fps": fps})
                print(f"  round {round_index}: {link} {transport}: {fps:.1f} frames/s", file=sys.stderr)
    rows = []
    for (link, transport), measured in runs.items():

        def median(key: str, measured: list[dict[str, list[float]]] = measured) -> float:
            return round(statistics.median(x for figures in measured for x in figures[key]), 2)

        rows.append(
            Row(
                link,
                transport,
                int(median("bytes")),
                median("encode"),
                median("round_trip"),
                median("server"),
                median("decode"),
                median("wire"),
                median("per_frame"),
                median("transport"),
                round(statistics.median(rates[(link, transport)]), 1),
            )
        )
    return rows, raw_runs


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| link | transport | bytes/frame | encode ms | round trip ms | server ms (decode) | wire ms "
        "| encode + round trip ms | transport ms | file mode frames/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.link} | {row.transport} | {row.bytes_per_frame:,} | {row.encode_ms} | "
            f"{row.round_trip_ms} | {row.server_ms} ({row.server_decode_ms}) | {row.wire_ms} | "
            f"{row.per_frame_ms} | **{row.transport_ms}** | {row.file_mode_fps} |"
        )
    return "\n".join(lines)


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facedet_bench.video_transport",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--video", type=Path, required=True, help="the clip whose frames are sent")
    parser.add_argument("--frames", type=int, default=51, help="frames of the clip to send per run")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every link and transport")
    parser.add_argument("--serve-args", default="", help="flags added to `facedet serve`")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)

    images = decoded(args.video, args.frames)
    folder = Path(tempfile.mkdtemp(prefix="fdvt-", dir="/tmp"))  # unix socket paths must be short
    socket_path = folder / "facedet.sock"

    def argv_for(target: str) -> list[str]:
        serve = [sys.executable, "-m", "facedet.cli", "serve", "--listen", target]
        return [
            *serve,
            "--listen",
            f"unix://{socket_path}",
            "--summary-interval",
            "0",
            *args.serve_args.split(),
        ]

    try:
        with spawned(argv_for) as (target, _pid):
            targets = {"tcp": target, "unix": f"unix://{socket_path}"}
            rows, raw = measure(targets, images, args.quality, args.rounds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    height, width = images[0].shape[:2]
    header = {
        "machine": machine(),
        "commit": commit(),
        "video": str(args.video),
        "frame": f"{width}x{height}",
        "frames": len(images),
        "quality": args.quality,
        "rounds": args.rounds,
        "serve_args": args.serve_args,
    }
    print(json.dumps(header))
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({**header, "rows": [asdict(r) for r in rows], "runs": raw}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
