"""Hostile input against a real server, each bounded in time and in the server's peak memory
(VmHWM from /proc, reset before each call): decompression bombs, progressive JPEGs with very
many scans, pathological PNGs, raw frames whose size lies, maximum-size messages, and a flood of
tiny requests. The inputs and their bounds are facedet_bench.hostile.CASES; the figures in
docs/reliability.md ("Hostile input: the bounds") come from `python -m facedet_bench.hostile`."""

from __future__ import annotations

import io

import numpy as np
import pytest
from facedet.v1 import face_detector_pb2 as pb
from facedet_bench import flood, hostile
from facedet_server.image.decode import decode_encoded
from facedet_server.image.jpeg_scans import count_scans
from facedet_server.image.png_data import image_data_size
from facedet_test_support import EXPECTED_FACES, Server, ServerFactory, free_port, image_bytes
from go_client_support import make, unavailable
from PIL import Image

# Bounds of the flood test. Memory: 1.6x the most measured (319 MiB, CI; docs/reliability.md).
# Health: half the kubelet's default probe timeout (1 s, which our readiness probe keeps), since
# on two shared cores the prober, the Go flood and the server contend (CI saw a p99 of 103 ms).
FLOOD_MAX_GROWTH_MIB = 512
# With --max-pending-calls 100000 the core holds the whole flood: 460-508 MiB measured.
FLOOD_BACKLOG_MAX_GROWTH_MIB = 1024
FLOOD_MAX_HEALTH_P99_MS = 500
# The flood must be one: at least twice what one Python front end takes in here (about 3,000
# calls a second). The generator asks for 10,000; on a busy 2-core CI runner it reached 8,867.
FLOOD_MIN_OFFERED_PER_S = 6_000


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


@pytest.mark.timeout(300)
def test_a_flood_of_tiny_requests_is_refused_not_fatal(start_server: ServerFactory) -> None:
    """10,000 tiny requests a second for 3 s over 20 connections, offered by facedet-flood (Go: a
    Python client on these two cores manages about 4,000), each with a 10 s deadline. Every call
    that reaches facedet's code ends OK or refused (RESOURCE_EXHAUSTED) and reaches the client
    so; what one Python front end cannot take in overflows gRPC core's backlog
    (--max-pending-calls), which ends it CANCELLED before our code sees it (docs/reliability.md).
    Health stays answered, the peak memory bounded, and the server answers a photo right after
    (facedet_bench.flood)."""
    report = flood_server(start_server)
    client, served = report.client_codes, report.server_codes
    assert set(client) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED"}, (
        client
    )
    assert set(served) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE"}, served
    assert served.get("RESOURCE_EXHAUSTED", 0) > 0 and served.get("OK", 0) > 0, served
    # What facedet answered is what the client got; the only CANCELLED are the calls it never
    # saw, and at the default backlog there are some (the next test raises it).
    for code in ("OK", "RESOURCE_EXHAUSTED"):
        assert client.get(code, 0) == served.get(code, 0), (client, served)
    assert client.get("CANCELLED", 0) == report.started - sum(served.values()), (client, served)
    assert client.get("CANCELLED", 0) > 0, client
    assert report.peak_rss_growth_mib is not None and report.peak_rss_growth_mib < FLOOD_MAX_GROWTH_MIB, (
        report
    )


@pytest.mark.timeout(300)
def test_a_larger_core_backlog_refuses_the_flood_instead_of_cancelling_it(
    start_server: ServerFactory,
) -> None:
    """The same flood with --max-pending-calls 100000: the core holds every call until the
    Python server takes it in, so facedet itself answers each one (refused, or expired while it
    waited) and the client sees no CANCELLED at all; the price is the wait in that backlog
    (docs/reliability.md measures it). Deadlines of 30 s, so that (almost) every call outlasts
    the backlog and reaches facedet's code to be counted."""
    report = flood_server(start_server, "--max-pending-calls", "100000", deadline=30)
    client, served = report.client_codes, report.server_codes
    assert "CANCELLED" not in client, client
    assert set(client) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, client
    assert sum(client.values()) == report.started, client
    assert served.get("RESOURCE_EXHAUSTED", 0) > 0, served
    for code in ("OK", "RESOURCE_EXHAUSTED"):
        assert client.get(code, 0) == served.get(code, 0), (client, served)
    # A call whose deadline passes once facedet has it is counted DEADLINE_EXCEEDED (or
    # CANCELLED, when the client's deadline reached the core first); one that expires still in
    # the core's backlog is never seen by facedet. The client has its deadline for all of them.
    expired = served.get("DEADLINE_EXCEEDED", 0) + served.get("CANCELLED", 0)
    assert client.get("DEADLINE_EXCEEDED", 0) >= expired, (client, served)
    # The backlog holds every waiting call's buffers: more memory than at the default.
    growth = report.peak_rss_growth_mib
    assert growth is not None and growth < FLOOD_BACKLOG_MAX_GROWTH_MIB, report


def flood_server(start_server: ServerFactory, *flags: str, deadline: float = 10) -> flood.FloodReport:
    """facedet_bench.flood's 10,000 calls a second for 3 s against a server of `flags`, checked
    for what every flood must give: the calls offered, health answered throughout, the server
    alive and answering a photo right after. Each call has `deadline` seconds."""
    build_flood()
    metrics = f"127.0.0.1:{free_port()}"
    args = flood.parser().parse_args(["--rate", "10000", "--duration", "3", "--deadline", str(deadline)])
    server = start_server("--metrics-listen", metrics, *flags, unix=False)
    assert server.proc is not None
    report = flood.flood(
        server.target, f"http://{metrics}/metrics", server.proc.pid, image_bytes("zidane.jpg"), args
    )
    server.check_alive()
    print(report)
    assert report.started == 30_000 and report.offered_per_s > FLOOD_MIN_OFFERED_PER_S, report
    assert report.health_failures == 0 and report.health_p99_ms < FLOOD_MAX_HEALTH_P99_MS, report
    assert report.photo_faces_after == EXPECTED_FACES["zidane.jpg"]
    return report


def build_flood() -> None:
    """facedet-flood, (re)built by `make clients-go` as the Go client tests build theirs."""
    build = make("clients-go")
    if build.returncode != 0:
        unavailable(f"`make clients-go` failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    assert flood.FLOOD_BIN.is_file(), f"make clients-go did not write {flood.FLOOD_BIN}"


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
