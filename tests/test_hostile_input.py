"""Hostile input against a real server, each bounded in time and in the server's peak memory
(VmHWM from /proc, reset before each call): decompression bombs, progressive JPEGs with very
many scans, pathological PNGs, raw frames whose size lies, maximum-size messages, and a flood of
tiny requests. The inputs and their bounds are facedet_bench.hostile.CASES; the figures in
docs/reliability.md ("Hostile input: the bounds") come from `python -m facedet_bench.hostile`."""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter

import grpc
import numpy as np
import pytest
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_bench import hostile
from facedet_bench.own_server import peak_rss_mib, reset_peak_rss, rss_mib
from facedet_server.image.decode import decode_encoded
from facedet_server.image.jpeg_scans import count_scans
from facedet_server.image.png_data import image_data_size
from facedet_test_support import CHANNEL_OPTIONS, EXPECTED_FACES, Server, ServerFactory, image_bytes
from PIL import Image


@pytest.fixture(scope="module")
def hostile_server(module_server_factory: ServerFactory) -> Server:
    return module_server_factory(unix=False, name="hostile")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", hostile.CASES, ids=[c.name for c in hostile.CASES])
def test_hostile_input_is_bounded(hostile_server: Server, case: hostile.Case) -> None:
    assert hostile_server.proc is not None
    with hostile_server.stub() as stub:
        measured = hostile.measure(stub, hostile_server.proc.pid, case)
        assert measured.code == case.code, measured
        assert case.message in measured.message, measured
        assert measured.seconds < case.max_seconds, measured
        assert measured.peak_growth_mib < case.max_peak_growth_mib, measured
        # ...and the server still answers a real photo.
        response = stub.DetectFaces(pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg")), timeout=30)
        assert len(response.faces) == EXPECTED_FACES["zidane.jpg"]
    hostile_server.check_alive()


async def _flood(target: str, seconds: float, rate: float, data: bytes) -> tuple[Counter[str], int, float]:
    """Open-loop: `rate` calls a second for `seconds`, never waiting for answers (up to 4,000 in
    flight). Returns the status counts, the calls issued and the seconds issuing took."""
    codes: Counter[str] = Counter()
    request = pb.DetectFacesRequest(encoded=data)
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FaceDetectorStub(channel)
        in_flight = asyncio.Semaphore(4000)

        async def one() -> None:
            try:
                await stub.DetectFaces(request, timeout=10)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
            finally:
                in_flight.release()

        tasks: list[asyncio.Task[None]] = []
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) - len(tasks)
            for _ in range(due):
                await in_flight.acquire()
                tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(0.001)
        issued_s = time.perf_counter() - started
        await asyncio.gather(*tasks)
    return codes, len(tasks), issued_s


@pytest.mark.timeout(180)
def test_a_flood_of_tiny_requests_is_refused_not_fatal(start_server: ServerFactory) -> None:
    """10,000 tiny requests a second for 3 s (as many as this client manages on a busy machine),
    each with a 10 s deadline: the queue limit refuses the excess with RESOURCE_EXHAUSTED, the
    rest are answered or run out of time, nothing else; the server stays up, answers a real
    photo after, and its peak memory stays bounded."""
    server = start_server(unix=False)
    assert server.proc is not None
    pid = server.proc.pid
    before = rss_mib(pid)
    reset_peak_rss(pid)
    codes, issued, issued_s = asyncio.run(_flood(server.target, 3.0, 10_000, hostile.small_jpeg()))
    growth = peak_rss_mib(pid) - before
    rate = issued / issued_s
    print(f"flood: {issued} calls in {issued_s:.1f} s ({rate:.0f}/s): {dict(codes)}; peak +{growth:.0f} MiB")
    # CANCELLED: calls whose deadline passed in the server's queue, where gRPC's server-side
    # expiry races the client's own (issue 17 section 1; the overload work is to end it).
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED"}, codes
    assert codes["RESOURCE_EXHAUSTED"] > 0, codes
    assert codes["OK"] > 0 and sum(codes.values()) == issued
    assert issued >= 3000, f"the client issued only {issued} calls; the test proved little"
    # About 100 KiB per call in flight (4,000 here): the server does not cap calls per connection.
    assert growth < 768, f"server peak RSS grew {growth:.0f} MiB"
    server.check_alive()
    with server.stub() as stub:
        response = stub.DetectFaces(pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg")), timeout=30)
    assert len(response.faces) == EXPECTED_FACES["zidane.jpg"]


# The checks themselves, on real files: nothing normal is refused.


def _jpeg(size: tuple[int, int] = (480, 640), save: dict[str, object] | None = None) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (*size, 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", **(save or {}))
    return out.getvalue()


@pytest.mark.parametrize(
    ("save", "scans"),
    [({}, 1), ({"progressive": True}, 10), ({"progressive": True, "subsampling": 0}, 10)],
)
def test_count_scans_of_real_jpegs(save: dict[str, object], scans: int) -> None:
    data = _jpeg(save=save)
    assert count_scans(data, 500) == scans
    decode_encoded(data, 50_000_000)


def test_count_scans_skips_an_exif_thumbnail() -> None:
    """An APP1 segment may carry a whole JPEG (SOS marker and all) as a thumbnail."""
    thumbnail = _jpeg((48, 64))
    app1 = b"Exif\x00\x00" + thumbnail
    data = _jpeg(save={"progressive": True})
    with_thumbnail = data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]
    assert count_scans(with_thumbnail, 500) == 10


def test_every_shared_photo_passes_the_checks() -> None:
    for name in ("zidane.jpg", "sample.jpg", "bus.jpg", "1.jpg", "test.jpg"):
        decode_encoded(image_bytes(name), 50_000_000)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "1", "I;16"])
def test_image_data_size_is_what_libpng_needs(mode: str) -> None:
    """The size the PNG check allows for is the exact inflated size of real files."""
    import zlib

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (37, 53, 3), np.uint8)).convert(mode)
    out = io.BytesIO()
    image.save(out, "PNG")
    data = out.getvalue()
    idat = b""
    offset = 8
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        if data[offset + 4 : offset + 8] == b"IDAT":
            idat += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert image_data_size(width, height, data[24], data[25], data[28] == 1) == len(zlib.decompress(idat))
    decode_encoded(data, 50_000_000)
