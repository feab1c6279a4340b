"""The engine process split: `--engine-process on` runs the model once, in an engine process,
and gRPC in front-end processes that send it batches over a unix socket (`facedet_server.engine`).

Unit tests for the wire format and the engine's job queue, then real processes: a supervisor
with an engine and front ends must answer exactly like a plain server, stop the engine last,
and exit non-zero when the engine dies; an engine and a front end run by hand must survive the
engine being killed and restarted."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import msgspec
import numpy as np
import pytest
from facedet.client import FaceDetectorClient
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from facedet_server.app import supervisor
from facedet_server.app.config import ON_CPU, ServerConfig
from facedet_server.app.server import limits_for
from facedet_server.engine import codec, protocol
from facedet_server.engine.protocol import (
    ArrayRef,
    BatchDone,
    BatchFailed,
    DetectionWire,
    EngineInfo,
    GpuPreparedWire,
    GpuPreparerWire,
    Hello,
    HostPreparerWire,
    LetterboxWire,
    LimitsWire,
    Message,
    OptionsWire,
    PreparedWire,
    RunBatch,
    SpecWire,
    TimingWire,
)
from facedet_server.engine.server import _Connection, _Job, _JobQueue
from facedet_server.engine.wire import ConnectionClosed, Frame, MalformedFrame, recv_message, send_message
from facedet_server.errors import Code, DetectError, InvalidImage, Overloaded
from facedet_server.faces.options import Options
from facedet_server.image.inputs import EncodedImage
from facedet_server.model.spec import UPSTREAM_YOLOV5N_05, ModelSpec
from facedet_server.pipeline.base import Detection, Limits, Prepared, Timing
from facedet_server.pipeline.gpu_prepare import GpuPrepared, GpuPreparer
from facedet_server.pipeline.host import HostPreparer
from facedet_server.tensor.letterbox import Letterbox
from facedet_test_support import (
    EXPECTED_FACES,
    MODEL,
    Server,
    ServerFactory,
    detect_request,
    free_port,
    image_bytes,
    open_channels,
    run_cli,
    wait_for,
)

LIGHT = ("--decode-threads", "1", "--intra-op-threads", "1")
PHOTOS = ["zidane.jpg", "sample.jpg", "bus.jpg", "1.jpg"]
ENGINE_START_TIMEOUT = 60.0
LIMITS = limits_for(ServerConfig())  # the server's defaults


# --- helpers ---------------------------------------------------------------------------------


def events(server: Server, name: str) -> list[dict[str, Any]]:
    return [r for r in server.log_records() if r.get("event") == name]


def face_rows(response: pb.DetectFacesResponse) -> list[tuple[float, float, float, float, float]]:
    return [(f.box.x_min, f.box.y_min, f.box.x_max, f.box.y_max, f.confidence) for f in response.faces]


def assert_same_faces(got: pb.DetectFacesResponse, want: pb.DetectFacesResponse, what: str) -> None:
    rows, expected = face_rows(got), face_rows(want)
    assert len(rows) == len(expected), f"{what}: {len(rows)} faces, the plain server found {len(expected)}"
    assert rows, f"{what}: no faces at all; the comparison proves nothing"
    for row, ref in zip(rows, expected, strict=True):
        assert row[:4] == pytest.approx(ref[:4], abs=1e-3), f"{what}: box {row[:4]} != {ref[:4]}"
        assert row[4] == pytest.approx(ref[4], abs=1e-6), f"{what}: confidence {row[4]} != {ref[4]}"


def rpc_error(call: Any) -> Any:
    """The grpc.RpcError a call raises (typed Any: grpc-stubs does not declare code()/details())."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def short_socket_dir() -> Path:
    """Unix socket paths are limited to ~107 bytes; pytest's tmp paths can be longer."""
    return Path(tempfile.mkdtemp(prefix="fde-", dir="/tmp"))


def start_engine(start_server: ServerFactory, socket_path: Path, name: str) -> Server:
    """`facedet serve --role engine` (no gRPC: readiness is its engine_serving log event)."""
    engine = start_server(
        "--role",
        "engine",
        "--engine-socket",
        str(socket_path),
        "--intra-op-threads",
        "1",
        "--engine-threads",
        "2",
        "--log-format",
        "json",
        tcp=False,
        unix=False,
        start=False,
        name=name,
    )
    engine.start(wait=False)

    def serving() -> bool:
        engine.check_alive()
        return bool(events(engine, "engine_serving"))

    wait_for(serving, ENGINE_START_TIMEOUT, f"{name} to log engine_serving", interval=0.05)
    return engine


def start_front_end(start_server: ServerFactory, socket_path: Path, *args: str) -> Server:
    """`facedet serve --role frontend` on a unix socket, feeding the engine at `socket_path`."""
    return start_server(
        "--role", "frontend", "--engine-socket", str(socket_path), "--decode-threads", "1", *args,
        model=None,  # a front end needs no model file
        tcp=False, name="frontend",
    )  # fmt: skip


def child_pids(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def kill_leftovers(pids: list[int]) -> None:
    """Children of a supervisor under test that outlived it (only on failure): never leave an
    engine (its own session) or a front end running after the test."""
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def start_supervised(start_server: ServerFactory, *args: str, unix: bool = False) -> Server:
    """`facedet serve ... --engine-process on`, SERVING on every front end."""
    server = start_server("--engine-process", "on", *LIGHT, *args, unix=unix)
    fronts = int(args[args.index("--processes") + 1])
    wait_for(
        lambda: len([r for r in events(server, "serving") if r.get("role") == "frontend"]) == fronts,
        30,
        f"{fronts} front ends to log serving",
    )
    return server


# --- wire ------------------------------------------------------------------------------------


def real_prepared() -> Prepared:
    preparer = HostPreparer(UPSTREAM_YOLOV5N_05, LIMITS)
    return preparer.prepare(EncodedImage(image_bytes("zidane.jpg")), Options(min_confidence=0.4))


def round_trip(message: Message, buffers: list[memoryview] | None = None) -> Frame:
    a, b = socket.socketpair()
    with a, b:
        # A sender thread: a message larger than the socket buffer blocks until it is read.
        errors: list[BaseException] = []

        def send() -> None:
            try:
                send_message(a, message, buffers or [])
            except BaseException as exc:
                errors.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        received = recv_message(b)
        sender.join(10)
        assert not errors, errors
        return received


def test_wire_round_trips_prepared_images() -> None:
    jpeg = image_bytes("sample.jpg")
    prepared = real_prepared()
    gpu = GpuPrepared(Options(max_faces=7), 1024, 768, jpeg=jpeg)
    gpu.timing.decode_us = 42
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    decoded = GpuPrepared(Options(), 7, 5, pixels=rgb[..., ::-1], scale=(0.5, 0.25))  # strided: a BGR view

    message, buffers = codec.run_batch([prepared, gpu, decoded])
    frame = round_trip(message, buffers)

    assert isinstance(frame.message, RunBatch)
    g_prepared, g_gpu, g_decoded = codec.batch_items(frame.message, frame.buffers)
    assert isinstance(g_prepared, Prepared)
    assert g_prepared.canvas.shape == prepared.canvas.shape == (640, 640, 3)
    assert g_prepared.canvas.dtype == np.uint8
    np.testing.assert_array_equal(g_prepared.canvas, prepared.canvas)
    assert g_prepared.canvas.flags.writeable, (
        "a received array must be writable (the pipeline works in place)"
    )
    g_prepared.canvas[0, 0, 0] ^= 1  # and really writable: no copy-on-write surprise
    assert (g_prepared.transform, g_prepared.options) == (prepared.transform, Options(min_confidence=0.4))
    assert (g_prepared.width, g_prepared.height, g_prepared.timing) == (1280, 720, prepared.timing)

    assert isinstance(g_gpu, GpuPrepared)
    assert isinstance(g_gpu.jpeg, memoryview), "the JPEG must travel out of band, as a view of the frame"
    assert g_gpu.jpeg.nbytes == len(jpeg) and bytes(g_gpu.jpeg) == jpeg
    assert (g_gpu.width, g_gpu.height, g_gpu.options) == (1024, 768, Options(max_faces=7))
    assert g_gpu.pixels is None and g_gpu.timing == Timing(decode_us=42) and g_gpu.scale == (1.0, 1.0)

    assert isinstance(g_decoded, GpuPrepared) and g_decoded.jpeg is None and g_decoded.pixels is not None
    np.testing.assert_array_equal(g_decoded.pixels, rgb[..., ::-1])
    assert g_decoded.pixels.flags.c_contiguous and g_decoded.pixels.flags.writeable
    assert g_decoded.scale == (0.5, 0.25)

    # Every array and JPEG is a view of the one buffer the frame was received into.
    assert len(frame.buffers) == 3 and len({id(view.obj) for view in frame.buffers}) == 1


def test_wire_sends_contiguous_data_without_copying_it() -> None:
    jpeg = image_bytes("zidane.jpg")
    canvas = np.zeros((64, 64, 3), np.uint8)
    prepared = Prepared(canvas, Letterbox(1.0, 1.0, 0.0, 0.0), 64, 64, Options())
    _, buffers = codec.run_batch([GpuPrepared(Options(), 1280, 720, jpeg=jpeg), prepared])
    assert buffers[0].obj is jpeg
    assert np.shares_memory(np.frombuffer(buffers[1], np.uint8), canvas)


def test_wire_round_trips_results_and_errors() -> None:
    class EngineOwn(InvalidImage):
        """An error class the wire does not know: it arrives as its nearest known base."""

    class Busy(DetectError):
        code = Code.UNAVAILABLE

    faces = np.arange(30, dtype=np.float32).reshape(2, 15)
    results: list[Detection | DetectError] = [
        Detection(faces, 640, 480, Timing(inference_us=5, batch_size=2)),
        InvalidImage("not a JPEG"),
        Detection(np.zeros((0, 15), np.float32), 32, 16, Timing()),
        Overloaded("queue full"),
        EngineOwn("odd JPEG"),
        Busy("later"),
    ]
    message, buffers = codec.batch_done(results)
    frame = round_trip(message, buffers)
    assert isinstance(frame.message, BatchDone)
    detection, error, empty, overloaded, own, busy = codec.batch_results(frame.message, frame.buffers)
    assert isinstance(detection, Detection)
    np.testing.assert_array_equal(detection.faces, faces)
    assert detection.faces.dtype == np.float32 and detection.faces.flags.writeable
    assert (detection.width, detection.height, detection.timing) == (
        640,
        480,
        Timing(inference_us=5, batch_size=2),
    )
    assert isinstance(error, InvalidImage)
    assert (error.code, error.message) == (Code.INVALID_ARGUMENT, "not a JPEG")
    assert isinstance(empty, Detection) and empty.faces.shape == (0, 15) and empty.faces.dtype == np.float32
    assert type(overloaded) is Overloaded and overloaded.code is Code.RESOURCE_EXHAUSTED
    assert type(own) is InvalidImage and own.message == "odd JPEG"
    assert type(busy) is DetectError and busy.code is Code.UNAVAILABLE, "the status the caller gets"


@pytest.mark.parametrize("kind", ["host", "gpu"])
def test_wire_describes_the_engines_preparer_as_data(kind: str) -> None:
    spec = dataclasses.replace(UPSTREAM_YOLOV5N_05, extra={"k": "v"}, input_height=None, batch_size=None)
    limits = Limits(max_pixels=1234, max_faces=56)
    preparer: HostPreparer | GpuPreparer = (
        HostPreparer(spec, limits, 512) if kind == "host" else GpuPreparer(spec, limits, 800, False, False)
    )
    info = codec.engine_info(
        preparer, spec, limits, backend="torch", device="cuda:0", model_sha256="ab" * 32, max_batch=64, pid=7
    )
    frame = round_trip(info)
    assert isinstance(frame.message, EngineInfo) and frame.buffers == []
    got = codec.preparer_of(frame.message.preparer)
    assert type(got) is type(preparer) and got == preparer
    assert codec.model_spec(frame.message.spec) == spec and codec.limits_of(frame.message.limits) == limits
    assert (frame.message.backend, frame.message.device, frame.message.max_batch) == ("torch", "cuda:0", 64)
    assert (frame.message.model_sha256, frame.message.pid) == ("ab" * 32, 7)


def test_wire_round_trips_hello_and_batch_failed() -> None:
    assert round_trip(Hello()).message == Hello()
    assert round_trip(BatchFailed("RuntimeError: out of memory")).message == BatchFailed(
        "RuntimeError: out of memory"
    )


@pytest.mark.parametrize(
    ("wire", "data"),
    [
        (SpecWire, ModelSpec),
        (LimitsWire, Limits),
        (TimingWire, Timing),
        (OptionsWire, Options),
        (LetterboxWire, Letterbox),
        (HostPreparerWire, HostPreparer),
        (GpuPreparerWire, GpuPreparer),
        (PreparedWire, Prepared),
        (GpuPreparedWire, GpuPrepared),
        (DetectionWire, Detection),
    ],
)
def test_wire_schemas_mirror_the_dataclasses(wire: type[msgspec.Struct], data: type[Any]) -> None:
    """A field added to a pipeline dataclass must be added to the wire (and `codec`) too."""
    assert wire.__struct_fields__ == tuple(f.name for f in dataclasses.fields(data))


def test_wire_keeps_message_boundaries() -> None:
    a, b = socket.socketpair()
    with a, b:
        for i in range(3):
            items = [
                GpuPrepared(Options(), i + 1, 1, jpeg=bytes([i]) * (i + 1)),
                GpuPrepared(Options(), 1, 1),
            ]
            send_message(a, *codec.run_batch(items))
            faces = np.full((i, 15), i, np.float32)
            send_message(a, *codec.batch_done([Detection(faces, 1, 1, Timing(total_us=i))]))
        for i in range(3):
            frame = recv_message(b)
            assert isinstance(frame.message, RunBatch)
            first, second = codec.batch_items(frame.message, frame.buffers)
            assert isinstance(first, GpuPrepared) and first.jpeg is not None
            assert (first.width, bytes(first.jpeg)) == (i + 1, bytes([i]) * (i + 1))
            assert isinstance(second, GpuPrepared) and second.jpeg is None
            frame = recv_message(b)
            assert isinstance(frame.message, BatchDone)
            (detection,) = codec.batch_results(frame.message, frame.buffers)
            assert isinstance(detection, Detection) and detection.timing.total_us == i
            np.testing.assert_array_equal(detection.faces, np.full((i, 15), i, np.float32))


def test_wire_peer_closing_between_frames_is_a_clean_close() -> None:
    a, b = socket.socketpair()
    with b:
        send_message(a, BatchFailed("last"))
        a.close()
        assert recv_message(b).message == BatchFailed("last")
        with pytest.raises(ConnectionClosed) as closed:
            recv_message(b)
        assert "middle" not in str(closed.value)


def frame_bytes(message: Message, buffers: list[memoryview] | None = None) -> bytes:
    a, b = socket.socketpair()
    with a, b:
        send_message(a, message, buffers or [])
        a.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := b.recv(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)


def raw_frame(body: bytes, buffers: tuple[bytes, ...] = ()) -> bytes:
    """A frame built by hand, as a foreign or broken writer would: header, lengths, body, buffers."""
    lengths = b"".join(struct.pack("!Q", len(buffer)) for buffer in buffers)
    return struct.pack("!QI", len(body), len(buffers)) + lengths + body + b"".join(buffers)


def receive(data: bytes) -> Frame:
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=a.sendall, args=(data,))  # more than the socket buffer holds
        sender.start()
        try:
            return recv_message(b)
        finally:
            a.shutdown(socket.SHUT_WR)  # what the receiver left unread no longer blocks the sender
            b.close()
            sender.join(10)


def test_wire_frame_layout_is_header_lengths_body_buffers() -> None:
    message, buffers = codec.run_batch([GpuPrepared(Options(), 1, 1, jpeg=b"x" * 4000)])
    assert frame_bytes(message, buffers) == raw_frame(msgspec.msgpack.encode(message), (b"x" * 4000,))


@pytest.mark.parametrize(
    "cut", [1, 11, 16, 30, -1000, -1], ids=["header", "count", "table", "body", "buffer", "last-byte"]
)
def test_wire_peer_closing_mid_frame_says_so(cut: int) -> None:
    data = frame_bytes(*codec.run_batch([GpuPrepared(Options(), 1, 1, jpeg=b"x" * 4000)]))
    assert struct.unpack("!QI", data[:12])[1] == 1, "expected one out-of-band buffer"
    a, b = socket.socketpair()
    with b:
        a.sendall(data[:cut])
        a.close()
        with pytest.raises(ConnectionClosed) as closed:
            recv_message(b)
    assert "middle" in str(closed.value)


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("!QI", 10, 0xFFFFFFFF),  # buffer count
        struct.pack("!QI", 1 << 62, 0),  # body length
        struct.pack("!QI", 10, 2) + struct.pack("!QQ", 5, 1 << 62),  # a buffer length
    ],
    ids=["buffers", "body", "buffer-length"],
)
def test_wire_corrupt_header_is_a_connection_error(header: bytes) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(header + b"\x00" * 64)
        with pytest.raises(ConnectionError) as corrupt:  # not MemoryError
            recv_message(b)
    assert "corrupt" in str(corrupt.value)
    assert not isinstance(corrupt.value, ConnectionClosed)


class _Planted:
    """What a pickle-speaking writer could send: loading it would create `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.path),)


TIMING = [0, 0, 0, 0, 0, 0]
OPTIONS = [0.5, 0.5, 1000, 0.0]


@pytest.mark.parametrize(
    "body",
    [
        msgspec.msgpack.encode(["Goodbye"]),
        msgspec.msgpack.encode(["RunBatch", [["cpu", OPTIONS, 1, 1, None, None, [1.0, 1.0], TIMING]]]),
        msgspec.msgpack.encode(["BatchFailed", 42]),
        msgspec.msgpack.encode(["BatchFailed", "x", "an extra field"]),
        msgspec.msgpack.encode({"type": "Hello"}),
        msgspec.msgpack.encode(msgspec.msgpack.Ext(1, b"x")),
        msgspec.msgpack.encode(
            ["RunBatch", [["gpu", OPTIONS, 1, 1, None, [0, "object", [1]], [1.0, 1.0], TIMING]]]
        ),
        msgspec.msgpack.encode(["RunBatch", [["gpu", OPTIONS, 1, 1, -1, None, [1.0, 1.0], TIMING]]]),
        msgspec.msgpack.encode(["BatchDone", [["error", "SystemExit", "INTERNAL", "bye"]]]),
        msgspec.msgpack.encode(["BatchDone", [["error", "InvalidImage", "NOT_A_CODE", "x"]]]),
        msgspec.msgpack.encode(["Hello"])[:-1],
        b"\xc1",  # a byte msgpack never uses
        b"",
        pickle.dumps(BatchFailed("pickled")),
    ],
    ids=[
        "unknown-message", "unknown-item", "wrong-type", "extra-field", "map-not-array", "ext-type",
        "object-dtype", "negative-index", "unknown-error-class", "unknown-code", "truncated", "not-msgpack",
        "empty", "pickle",
    ],
)  # fmt: skip
def test_wire_refuses_a_frame_outside_the_schema(body: bytes) -> None:
    with pytest.raises(ConnectionError, match="malformed frame") as refused:
        receive(raw_frame(body, (b"\x00" * 8,)))
    assert isinstance(refused.value, MalformedFrame) and not isinstance(refused.value, ConnectionClosed)


def test_wire_never_loads_a_pickle(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    with pytest.raises(MalformedFrame):
        receive(raw_frame(pickle.dumps(_Planted(planted), protocol=5)))
    assert not planted.exists(), "decoding ran the writer's code"


def _run_batch_frame(*items: Any, buffers: tuple[bytes, ...]) -> Frame:
    return receive(raw_frame(msgspec.msgpack.encode(RunBatch(list(items))), buffers))


WIRE_OPTIONS = OptionsWire(0.5, 0.5, 1000, 0.0, True)
WIRE_TIMING = TimingWire(0, 0, 0, 0, 0, 0)
IDENTITY = LetterboxWire(1.0, 1.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("item", "complaint"),
    [
        (
            PreparedWire(ArrayRef(1, "uint8", (2, 2, 3)), IDENTITY, 2, 2, WIRE_OPTIONS, WIRE_TIMING),
            "buffer 1",
        ),
        (PreparedWire(ArrayRef(0, "uint8", (2, 2, 3)), IDENTITY, 2, 2, WIRE_OPTIONS, WIRE_TIMING), "shape"),
        (PreparedWire(ArrayRef(0, "float32", (3, 1)), IDENTITY, 2, 2, WIRE_OPTIONS, WIRE_TIMING), "shape"),
        (GpuPreparedWire(WIRE_OPTIONS, 1, 1, 3, None, (1.0, 1.0), 1, WIRE_TIMING), "buffer 3"),
        (
            GpuPreparedWire(
                WIRE_OPTIONS, 1, 1, None, ArrayRef(0, "uint8", (0, 1 << 62, 4)), (1, 1), 1, WIRE_TIMING
            ),
            "",
        ),
    ],
    ids=["index", "size", "itemsize", "jpeg-index", "absurd-shape"],
)
def test_wire_refuses_references_the_frame_cannot_back(item: Any, complaint: str) -> None:
    frame = _run_batch_frame(item, buffers=(b"\x00" * 8,) if complaint != "" else (b"",))
    assert isinstance(frame.message, RunBatch)
    with pytest.raises(MalformedFrame, match=f"malformed frame.*{complaint}"):
        codec.batch_items(frame.message, frame.buffers)


def test_wire_refuses_a_spec_its_own_checks_refuse() -> None:
    spec = msgspec.structs.replace(codec.spec_wire(UPSTREAM_YOLOV5N_05), strides=(8, 16))
    with pytest.raises(MalformedFrame, match="anchor sets"):
        codec.model_spec(spec)


PROTOCOL_TYPES = {
    cls for cls in vars(protocol).values() if isinstance(cls, type) and issubclass(cls, msgspec.Struct)
}


def declared_only(value: Any) -> None:
    """Everything a decoded message holds: declared Structs, numbers, strings, tuples and lists."""
    if isinstance(value, msgspec.Struct):
        assert type(value) in PROTOCOL_TYPES, type(value)
        for name in value.__struct_fields__:
            declared_only(getattr(value, name))
    elif isinstance(value, tuple | list):
        for element in value:
            declared_only(element)
    elif isinstance(value, dict):
        assert all(type(k) is str and type(v) is str for k, v in value.items())
    else:
        assert type(value) in (int, float, str, bool, type(None)), type(value)


def test_wire_decodes_nothing_but_declared_types() -> None:
    """Every byte of valid bodies flipped in turn: each frame is refused, or decodes to declared
    types only, and the codec then yields the pipeline's dataclasses or refuses it."""
    jpeg = b"\xff\xd8" + b"j" * 30
    items: list[Prepared | GpuPrepared] = [
        real_prepared(),
        GpuPrepared(Options(), 4, 2, jpeg=jpeg),
        GpuPrepared(Options(), 2, 1, pixels=np.ones((1, 2, 3), np.uint8)),
    ]
    results: list[Detection | DetectError] = [
        Detection(np.ones((1, 15), np.float32), 4, 2, Timing()),
        InvalidImage("x"),
    ]
    info = codec.engine_info(
        GpuPreparer(UPSTREAM_YOLOV5N_05, LIMITS), UPSTREAM_YOLOV5N_05, LIMITS,
        backend="torch", device="cuda", model_sha256="0" * 64, max_batch=8, pid=1,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "decoded": 0}
    for message, views in (codec.run_batch(items), codec.batch_done(results), (info, [])):
        body = msgspec.msgpack.encode(message)
        buffers = tuple(bytes(view) for view in views)
        for position in range(len(body)):
            mutated = bytearray(body)
            mutated[position] ^= int(rng.integers(1, 256))
            try:
                frame = receive(raw_frame(bytes(mutated), buffers))
                declared_only(frame.message)
                if isinstance(frame.message, RunBatch):
                    got: list[Any] = codec.batch_items(frame.message, frame.buffers)
                    assert all(type(item) in (Prepared, GpuPrepared) for item in got)
                elif isinstance(frame.message, BatchDone):
                    got = codec.batch_results(frame.message, frame.buffers)
                    assert all(type(r) is Detection or isinstance(r, DetectError) for r in got)
                elif isinstance(frame.message, EngineInfo):
                    assert type(codec.preparer_of(frame.message.preparer)) in (HostPreparer, GpuPreparer)
                    codec.model_spec(frame.message.spec)
            except MalformedFrame:
                outcomes["refused"] += 1
            else:
                outcomes["decoded"] += 1
    assert outcomes["refused"] > 50 and outcomes["decoded"] > 50, outcomes


# --- the engine's job queue ------------------------------------------------------------------


@pytest.fixture
def connection() -> Iterator[_Connection]:
    a, b = socket.socketpair()
    with a, b:
        yield _Connection(a)


def jobs_of(connection: _Connection, *sizes: int) -> list[_Job]:
    return [_Job(connection, [f"{i}.{k}" for k in range(size)], 0.0) for i, size in enumerate(sizes)]


def sizes(taken: list[_Job] | None) -> list[int] | None:
    return None if taken is None else [len(job.items) for job in taken]


def test_job_queue_takes_jobs_in_order_while_they_fit(connection: _Connection) -> None:
    queue = _JobQueue()
    jobs = jobs_of(connection, 3, 4, 2, 8, 1, 1, 5, 4, 12, 1)
    for job in jobs:
        queue.put(job)
    queue.close()  # queued jobs are still handed out, then None
    taken = []
    while (batch := queue.take(8)) is not None:
        taken.append(batch)
    assert [sizes(t) for t in taken] == [[3, 4], [2], [8], [1, 1, 5], [4], [12], [1]]
    # Nothing reordered, nothing lost: a later small job never jumps one that did not fit.
    assert [job for batch in taken for job in batch] == jobs


def test_job_queue_take_waits_and_close_wakes_it(connection: _Connection) -> None:
    queue = _JobQueue()
    got: list[list[int] | None] = []
    taker = threading.Thread(target=lambda: got.append(sizes(queue.take(8))))
    taker.start()
    time.sleep(0.05)
    assert got == [], "take must wait for a job"
    queue.put(jobs_of(connection, 2)[0])
    taker.join(5)
    assert got == [[2]]

    taker = threading.Thread(target=lambda: got.append(sizes(queue.take(8))))
    taker.start()
    time.sleep(0.05)
    queue.close()
    taker.join(5)
    assert not taker.is_alive() and got == [[2], None]
    assert queue.take(8) is None, "closed and empty: None at once"


# --- logs ----------------------------------------------------------------------------------

LOG_WRITES = """
import io, sys
writes = []
class Raw(io.RawIOBase):
    def writable(self):
        return True
    def write(self, b):
        writes.append(bytes(b))
        return len(b)
# What `python -u` / PYTHONUNBUFFERED=1 (the Dockerfile sets it) makes of stderr.
sys.stderr = io.TextIOWrapper(Raw(), write_through=True)
import structlog
from facedet_server.app.logs import configure_logging
configure_logging("json")
structlog.get_logger().info("first", role="engine")
structlog.get_logger().info("second", role="frontend")
print(repr(writes), file=sys.__stdout__)
"""


def test_each_log_line_is_one_write() -> None:
    """The engine, the front ends and the supervisor share one stderr: a line written in two
    pieces (text, then newline) interleaves with another process's line."""
    result = subprocess.run(
        [sys.executable, "-c", LOG_WRITES], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    writes = ast.literal_eval(result.stdout)
    assert len(writes) == 2, writes
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes), writes
    assert [json.loads(w)["event"] for w in writes] == ["first", "second"]


# --- supervisor: engine + front ends ---------------------------------------------------------


@pytest.fixture(scope="module")
def plain_server(module_server_factory: ServerFactory) -> Server:
    return module_server_factory(*LIGHT, unix=False, name="plain")


@pytest.fixture(scope="module")
def engine_server(module_server_factory: ServerFactory) -> Server:
    flags = ["--processes", "2", "--engine-process", "on", "--engine-max-batch", "4", "--gil-switch-ms", "2"]
    flags += ["--summary-interval", "1", *LIGHT]
    server = module_server_factory(*flags, unix=False, name="split")
    wait_for(
        lambda: len([r for r in events(server, "serving") if r.get("role") == "frontend"]) == 2,
        30,
        "both front ends to log serving",
    )
    return server


def test_front_ends_answer_like_a_plain_server(plain_server: Server, engine_server: Server) -> None:
    for name in PHOTOS:
        request = detect_request(image_bytes(name))
        with plain_server.stub() as stub:
            want = stub.DetectFaces(request, timeout=30)
        for attempt in range(2):  # a new connection each time: the kernel picks a front end
            with engine_server.stub() as stub:
                got = stub.DetectFaces(request, timeout=30)
            assert_same_faces(got, want, f"{name} (call {attempt})")
        if name in EXPECTED_FACES:
            assert len(got.faces) == EXPECTED_FACES[name]
        assert got.timing.inference_us > 0


def test_stream_through_a_front_end_keeps_frame_order(plain_server: Server, engine_server: Server) -> None:
    frames = [(100 + i, PHOTOS[i % len(PHOTOS)]) for i in range(8)]
    requests = [detect_request(image_bytes(name), frame_id=frame_id) for frame_id, name in frames]
    with plain_server.stub() as stub:
        want = list(stub.StreamDetectFaces(iter(requests), timeout=60))
    with engine_server.stub() as stub:
        got = list(stub.StreamDetectFaces(iter(requests), timeout=60))
    assert [r.frame_id for r in got] == [frame_id for frame_id, _ in frames]
    for response, reference, (frame_id, name) in zip(got, want, frames, strict=True):
        assert not response.HasField("error"), response.error
        assert_same_faces(response, reference, f"frame {frame_id} ({name})")


def test_model_info_through_a_front_end_is_the_engines(plain_server: Server, engine_server: Server) -> None:
    with plain_server.stub() as stub:
        want = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    with engine_server.stub() as stub:
        got = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert got.backend == want.backend == "onnxruntime"
    assert got.execution_provider == want.execution_provider
    assert got.model_sha256 == want.model_sha256 and len(got.model_sha256) == 64
    assert (got.name, got.input_width, got.input_height) == (want.name, want.input_width, want.input_height)
    assert got.limits == want.limits and got.default_options == want.default_options


def test_bad_input_through_a_front_end_keeps_the_engine_connection(engine_server: Server) -> None:
    good = detect_request(image_bytes("zidane.jpg"))
    corrupt = image_bytes("zidane.jpg")[:600] + b"\x00" * 3000
    with engine_server.stub() as stub:
        assert len(stub.DetectFaces(good, timeout=30).faces) == 2
        for bad in (corrupt, b"\xff\xd8\xff garbage", b"not an image at all"):
            error = rpc_error(lambda bad=bad: stub.DetectFaces(detect_request(bad), timeout=30))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert len(stub.DetectFaces(good, timeout=30).faces) == 2
        # In a stream, a bad frame is an error response between good ones.
        stream = [detect_request(image_bytes("bus.jpg"), frame_id=1), detect_request(corrupt, frame_id=2)]
        stream.append(detect_request(image_bytes("zidane.jpg"), frame_id=3))
        responses = list(stub.StreamDetectFaces(iter(stream), timeout=30))
    assert [r.frame_id for r in responses] == [1, 2, 3]
    assert [r.HasField("error") for r in responses] == [False, True, False]
    assert responses[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert len(responses[2].faces) == 2


def test_one_engine_and_logs_say_who_wrote_them(engine_server: Server) -> None:
    records = engine_server.log_records()
    assert len(events(engine_server, "engine_serving")) == 1, [r.get("event") for r in records]
    (serving,) = events(engine_server, "engine_serving")
    assert serving["role"] == "engine" and serving["backend"] == "onnxruntime"
    assert serving["max_batch"] == 4  # --engine-max-batch, apart from the front ends' --max-batch
    assert serving["switch_interval_s"] == pytest.approx(0.002)  # --gil-switch-ms, in every process
    loaded = [r for r in records if r["event"] == "model_loaded"]
    assert len(loaded) == 2 and all(r["switch_interval_s"] == pytest.approx(0.002) for r in loaded)
    # The batching settings left automatic: the front ends resolve them for the engine's backend
    # (ONNX Runtime: the CPU's), and the engine's threads follow the resolved --batch-workers.
    cpu = (ON_CPU.max_batch, ON_CPU.batch_workers, ON_CPU.max_queue)
    assert [(r["max_batch"], r["batch_workers"], r["max_queue"]) for r in loaded] == [cpu] * 2
    assert serving["threads"] == ON_CPU.batch_workers
    connected = events(engine_server, "engine_connected")
    assert len(connected) == 2 and len({r["engine_pid"] for r in connected}) == 1, connected
    front = [r for r in records if r.get("role") == "frontend"]
    assert {r["process"] for r in front} == {"0", "1"}
    assert [r["event"] for r in front].count("model_loaded") == 2
    supervisor_events = {"engine_process", "processes", "engine_exited", "engine_started"}
    for record in records:
        if record["event"] not in supervisor_events:
            assert record.get("role") in ("engine", "frontend") and "process" in record, record


def test_engine_stops_last(engine_server: Server) -> None:
    with engine_server.stub() as stub:
        assert len(stub.DetectFaces(detect_request(image_bytes("zidane.jpg")), timeout=30).faces) == 2
    wait_for(
        lambda: any(r["images"] > 0 for r in events(engine_server, "engine_summary")),
        5,
        "an engine_summary that counts images (--summary-interval 1)",
    )
    assert engine_server.stop() == 0, engine_server.log_text()
    records = engine_server.log_records()
    order = [(r.get("role"), r["event"]) for r in records]
    front_stopped = [i for i, entry in enumerate(order) if entry == ("frontend", "stopped")]
    engine_stopped = [i for i, entry in enumerate(order) if entry == ("engine", "engine_stopped")]
    assert len(front_stopped) == 2 and len(engine_stopped) == 1, order
    assert engine_stopped[0] > max(front_stopped), f"the engine must stop after the front ends: {order}"
    assert order[-1] == ("engine", "engine_stopped"), order
    assert not [r for r in records if r["event"] in ("engine_exited", "engine_connection_dropped")]


def test_two_engines_share_the_front_ends(start_server: ServerFactory, plain_server: Server) -> None:
    """--engines 2: two engine processes, front end i on engine i mod 2; clients spread over the
    front ends by the kernel get the plain server's faces whichever engine ran them, and with
    --engine-restarts 0 the death of either engine stops the whole set (restarts: test_topology)."""
    flags = ("--processes", "2", "--engines", "2", "--summary-interval", "1", "--engine-restarts", "0")
    server = start_supervised(start_server, *flags)
    assert server.proc is not None
    children = child_pids(server.proc.pid)
    try:
        serving = events(server, "engine_serving")
        assert sorted(r["process"] for r in serving) == ["engine-0", "engine-1"], serving
        connected = events(server, "engine_connected")
        assert len({r["engine_pid"] for r in connected}) == 2, connected  # one engine each
        (announced,) = events(server, "engine_process")
        assert [Path(p).name for p in announced["sockets"]] == ["engine-0.sock", "engine-1.sock"]
        with plain_server.stub() as stub:
            want = {name: stub.DetectFaces(detect_request(image_bytes(name)), timeout=30) for name in PHOTOS}
        with open_channels(server.target, 8) as channels:
            for k, channel in enumerate(channels):
                name = PHOTOS[k % len(PHOTOS)]
                got = pb_grpc.FaceDetectorStub(channel).DetectFaces(
                    detect_request(image_bytes(name)), timeout=30
                )
                assert_same_faces(got, want[name], f"{name} on channel {k}")
        wait_for(
            lambda: (
                {r["process"] for r in events(server, "engine_summary") if r.get("images", 0) > 0}
                == {"engine-0", "engine-1"}
            ),
            15,
            "both engines to run images (8 connections over 2 front ends)",
        )
        engine_pid = next(r["pid"] for r in events(server, "engine_serving") if r["process"] == "engine-1")
        os.kill(engine_pid, signal.SIGKILL)
        assert server.wait_exit(15) != 0, server.log_text()
        assert not [pid for pid in children if pid_alive(pid)], "processes outlived the supervisor"
    finally:
        kill_leftovers(children)


def test_engines_without_an_engine_process_is_refused() -> None:
    result = run_cli(
        "serve",
        "--model",
        str(MODEL),
        "--processes",
        "2",
        "--engines",
        "2",
        "--engine-process",
        "off",
        timeout=30,
    )
    assert result.returncode == 2
    assert "--engines 2 needs engine processes, and there are none: --engine-process off" in result.stderr


def test_supervisor_exits_non_zero_when_the_engine_is_killed(start_server: ServerFactory) -> None:
    """With --engine-restarts 0 (restarts: test_topology), an engine's death stops the server."""
    server = start_supervised(start_server, "--processes", "2", "--engine-restarts", "0")
    assert server.proc is not None
    children = child_pids(server.proc.pid)
    try:
        (engine_pid,) = {r["engine_pid"] for r in events(server, "engine_connected")}
        assert engine_pid in children and len(children) == 3, (engine_pid, children)
        with server.stub() as stub:
            assert len(stub.DetectFaces(detect_request(image_bytes("zidane.jpg")), timeout=30).faces) == 2
        (announced,) = events(server, "engine_process")
        socket_dir = Path(announced["sockets"][0]).parent
        assert socket_dir.is_dir()
        os.kill(engine_pid, signal.SIGKILL)
        code = server.wait_exit(15)
        assert code != 0, server.log_text()
        exited = events(server, "engine_exited")
        assert len(exited) == 1 and exited[0]["code"] == -signal.SIGKILL, exited
        assert not [pid for pid in children if pid_alive(pid)], "front ends outlived the supervisor"
        assert not socket_dir.exists(), "the supervisor must remove the engine's socket folder"
    finally:
        kill_leftovers(children)


def test_one_front_end_on_a_unix_socket_and_an_engine_stopped_by_sigterm(start_server: ServerFactory) -> None:
    """--processes 1 --engine-process on: one front end, unix listen addresses allowed. An engine
    that exits, even cleanly (SIGTERM sent to it alone), is still a failure for the supervisor
    (past --engine-restarts 0)."""
    # --grace-seconds 2: how long the engine keeps serving its still-connected front end.
    server = start_supervised(
        start_server, "--processes", "1", "--grace-seconds", "2", "--engine-restarts", "0", unix=True
    )
    assert server.proc is not None
    children = child_pids(server.proc.pid)
    try:
        with server.stub(server.unix_target) as stub:
            assert len(stub.DetectFaces(detect_request(image_bytes("zidane.jpg")), timeout=30).faces) == 2
        (engine_pid,) = {r["engine_pid"] for r in events(server, "engine_connected")}
        os.kill(engine_pid, signal.SIGTERM)
        code = server.wait_exit(15)
        assert events(server, "engine_stopped"), "SIGTERM stops the engine cleanly"
        assert events(server, "engine_exited"), server.log_text()
        assert code != 0, f"the engine went away but the supervisor exited {code}"
    finally:
        kill_leftovers(children)


# --- engine and front end by hand ------------------------------------------------------------


def test_front_end_survives_the_engine_being_killed_and_restarted(start_server: ServerFactory) -> None:
    socket_dir = short_socket_dir()
    try:
        socket_path = socket_dir / "e.sock"
        assert len(str(socket_path)) < 100
        engine = start_engine(start_server, socket_path, "engine")
        assert socket_path.is_socket() and (socket_path.stat().st_mode & 0o777) == 0o600
        assert events(engine, "engine_serving")[0]["threads"] == 2  # --engine-threads, not --batch-workers
        front = start_front_end(start_server, socket_path)
        request = detect_request(image_bytes("zidane.jpg"))
        with front.stub() as stub:
            assert len(stub.DetectFaces(request, timeout=30).faces) == 2

            assert engine.proc is not None
            engine.proc.kill()
            engine.proc.wait(10)
            assert socket_path.exists(), "a killed engine leaves its socket file behind"
            for call in ("on the broken connection", "reconnecting to a dead socket"):
                error = rpc_error(lambda: stub.DetectFaces(request, timeout=30))
                assert error.code() == grpc.StatusCode.UNAVAILABLE, (call, error.details())
                assert str(socket_path) in error.details(), (call, error.details())
            front.check_alive()

            # A new engine replaces the stale socket file; the front end reconnects on its own.
            engine = start_engine(start_server, socket_path, "engine2")

            def detects() -> bool:
                try:
                    return len(stub.DetectFaces(request, timeout=30).faces) == 2
                except grpc.RpcError:
                    return False

            wait_for(detects, 10, "the front end to reach the restarted engine", interval=0.1)

            # A second engine must not take over a live engine's socket.
            second = run_cli(
                "serve", "--role", "engine", "--engine-socket", str(socket_path), "--model", str(MODEL),
                "--intra-op-threads", "1", timeout=60,
            )  # fmt: skip
            assert second.returncode == 1, second.stderr
            assert "already listening" in second.stderr and "Traceback" not in second.stderr, second.stderr
            assert "backend_chosen" not in second.stderr, "it must fail before loading the model"
            assert socket_path.is_socket()
            assert len(stub.DetectFaces(request, timeout=30).faces) == 2
        assert front.stop() == 0, front.log_text()
        assert engine.stop() == 0, engine.log_text()
        assert not socket_path.exists(), "a stopped engine removes its socket file"
        assert [r["role"] for r in engine.log_records()] == ["engine"] * len(engine.log_records())
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_engine_given_sigterm_serves_its_front_ends_until_they_hang_up(start_server: ServerFactory) -> None:
    """Engine and front ends as separate containers of one pod get SIGTERM together: the engine
    must not fail the calls the front ends are still draining."""
    socket_dir = short_socket_dir()
    try:
        socket_path = socket_dir / "e.sock"
        engine = start_engine(start_server, socket_path, "engine")
        front = start_front_end(start_server, socket_path)
        request = detect_request(image_bytes("zidane.jpg"))
        with front.stub() as stub:
            assert len(stub.DetectFaces(request, timeout=30).faces) == 2
            engine.signal(signal.SIGTERM)
            wait_for(lambda: bool(events(engine, "engine_draining")), 10, "the engine to start draining")
            # One connection per inference thread of the front end (its batch workers), and the
            # one through which the front end watches the engine (EnginePipeline.watch).
            workers = events(front, "model_loaded")[0]["batch_workers"]
            assert events(engine, "engine_draining")[0]["front_ends"] == workers + 1
            assert not socket_path.exists(), "a draining engine takes no new front ends"
            for _ in range(3):
                assert len(stub.DetectFaces(request, timeout=30).faces) == 2
            engine.check_alive()
        assert front.stop() == 0, front.log_text()
        assert engine.wait_exit(10) == 0, engine.log_text()
        assert events(engine, "engine_stopped") and not events(engine, "engine_drain_timeout")
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_front_end_fails_a_batch_a_hung_engine_does_not_answer(start_server: ServerFactory) -> None:
    """A stopped engine process (SIGSTOP: what a hung GPU looks like from outside) costs the
    calls waiting on it --engine-timeout, not their whole deadline; once it runs again the
    front end reconnects."""
    socket_dir = short_socket_dir()
    try:
        socket_path = socket_dir / "e.sock"
        engine = start_engine(start_server, socket_path, "engine")
        front = start_front_end(start_server, socket_path, "--engine-timeout", "1.5")
        request = detect_request(image_bytes("zidane.jpg"))
        assert engine.proc is not None
        with front.stub() as stub:
            assert len(stub.DetectFaces(request, timeout=30).faces) == 2
            engine.proc.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                error = rpc_error(lambda: stub.DetectFaces(request, timeout=30))
                waited = time.monotonic() - started
            finally:
                engine.proc.send_signal(signal.SIGCONT)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            assert str(socket_path) in error.details() and "timed out" in error.details()
            assert 1.0 < waited < 10, f"the call failed after {waited:.1f} s"
            assert len(stub.DetectFaces(request, timeout=30).faces) == 2
        assert front.stop() == 0, front.log_text()
        assert engine.stop() == 0, engine.log_text()
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_front_end_waiting_for_its_engine_stops_on_sigterm(start_server: ServerFactory) -> None:
    socket_dir = short_socket_dir()
    try:
        front = start_server(
            "--role", "frontend", "--engine-socket", str(socket_dir / "late.sock"), "--engine-wait", "20",
            "--decode-threads", "1", model=None, tcp=False, start=False, name="waiting",
        )  # fmt: skip
        front.start(wait=False)
        wait_for(lambda: bool(events(front, "listening")), 30, "the front end to open its port")
        front.signal(signal.SIGTERM)
        front.wait_exit(5)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


# --- settings --------------------------------------------------------------------------------


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_engine_with_the_torch_pipeline_answers_like_a_plain_server(
    start_server: ServerFactory, plain_server: Server
) -> None:
    """The GPU pipeline (GpuPipeline with our PyTorch model, here on the CPU build of torch)
    behind the engine, as --backend torch runs it on a GPU: frames of a stream, several in
    flight, must come back in order with the plain server's faces."""
    server = start_supervised(
        start_server,
        *("--processes", "2", "--backend", "torch", "--device", "cpu", "--compile", "off"),
        *("--max-batch", "4", "--batch-workers", "2", "--summary-interval", "1"),
    )
    (serving,) = events(server, "engine_serving")
    assert serving["backend"] == "torch", serving
    # Left automatic: torch on --device cpu runs on the CPU, so the CPU's values (Python's 5 ms
    # switch interval, a queue of 256), in the engine and in the front ends, which learn the
    # backend and device from the engine; the batching flags given stay as given.
    loaded = events(server, "model_loaded")
    assert [r["switch_interval_s"] for r in [serving, *loaded]] == [0.005] * 3, [serving, *loaded]
    assert [(r["max_batch"], r["batch_workers"], r["max_queue"]) for r in loaded] == [(4, 2, 256)] * 2
    # Photos whose faces are all well above the threshold: 1.jpg's 22 include one the two
    # runtimes put on either side of 0.5.
    photos = ["zidane.jpg", "sample.jpg", "bus.jpg"]
    names = [photos[i % len(photos)] for i in range(12)]
    requests = [detect_request(image_bytes(name), frame_id=i) for i, name in enumerate(names)]
    with plain_server.stub() as stub:
        want = {name: stub.DetectFaces(detect_request(image_bytes(name)), timeout=30) for name in photos}
    with server.stub() as stub:
        got = list(stub.StreamDetectFaces(iter(requests), timeout=120))
    assert [r.frame_id for r in got] == list(range(12))
    for response, name in zip(got, names, strict=True):
        assert not response.HasField("error"), response.error
        rows, expected = face_rows(response), face_rows(want[name])
        assert len(rows) == len(expected) > 0, (name, rows, expected)
        for row in expected:  # float32 torch against ONNX Runtime: the same faces, not the same bits
            assert max(_box_iou(row, other) for other in rows) >= 0.9, (name, row, rows)
    wait_for(
        lambda: any(r.get("images", 0) > 0 for r in events(server, "engine_summary")),
        10,
        "an engine_summary that counts the frames",
    )


def test_front_end_needs_an_engine_socket() -> None:
    listen = f"127.0.0.1:{free_port()}"
    result = run_cli("serve", "--role", "frontend", "--listen", listen, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--role frontend needs --engine-socket" in result.stderr
    engine_args = ("--role", "engine", "--processes", "2", "--engine-socket", "/tmp/x.sock")
    result = run_cli("serve", *engine_args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--processes applies to --role server" in result.stderr


@pytest.fixture(scope="module")
def no_engine_run() -> tuple[subprocess.CompletedProcess[str], Path, float]:
    """A front end with --engine-wait 1 and nothing at its socket path."""
    socket_dir = short_socket_dir()
    try:
        socket_path = socket_dir / "none.sock"
        started = time.monotonic()
        result = run_cli(
            "serve", "--role", "frontend", "--engine-socket", str(socket_path), "--engine-wait", "1",
            "--listen", f"127.0.0.1:{free_port()}", "--decode-threads", "1", timeout=60,
        )  # fmt: skip
        return result, socket_path, time.monotonic() - started
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_front_end_with_no_engine_gives_up_after_engine_wait(
    no_engine_run: tuple[subprocess.CompletedProcess[str], Path, float],
) -> None:
    result, socket_path, elapsed = no_engine_run
    assert result.returncode == 1, result.stderr
    assert "no inference engine answered" in result.stderr and str(socket_path) in result.stderr
    assert elapsed < 30, f"--engine-wait 1 took {elapsed:.1f}s"


def test_front_end_with_no_engine_prints_no_traceback(
    no_engine_run: tuple[subprocess.CompletedProcess[str], Path, float],
) -> None:
    result, _, _ = no_engine_run
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"engine_process": "on", "processes": 1}, True),
        ({"engine_process": "on", "processes": 2, "backend": "onnxruntime"}, True),
        ({"engine_process": "off", "processes": 2, "backend": "tensorrt"}, False),
        ({"engine_process": "off", "processes": 1, "backend": "torch"}, False),
        ({"engine_process": "auto", "processes": 1, "backend": "tensorrt"}, False),
        ({"engine_process": "auto", "processes": 1, "backend": "torch"}, False),
        ({"engine_process": "auto", "processes": 2, "backend": "onnxruntime"}, False),
        ({"engine_process": "auto", "processes": 2, "backend": "torch"}, True),
        ({"engine_process": "auto", "processes": 2, "backend": "tensorrt"}, True),
        ({"engine_process": "auto", "processes": 2, "model": "/models/face.plan"}, True),
        ({"engine_process": "auto", "processes": 3, "model": "face.engine"}, True),
        ({"engine_process": "auto", "processes": 1, "model": "/models/face.plan"}, False),
        ({"engine_process": "auto", "processes": 2, "backend": "onnxruntime", "model": "x.plan"}, False),
    ],
)
def test_wants_engine(settings: dict[str, Any], expected: bool) -> None:
    use, reason = supervisor.wants_engine(ServerConfig(**settings))
    assert use is expected, reason
    assert reason
    if settings["engine_process"] != "auto":
        assert reason == f"--engine-process {settings['engine_process']}"


def free_port_pair() -> int:
    """A port P with P and P+1 both free (for --front-end-listen HOST:P with two front ends)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def test_front_ends_of_their_own_spread_a_clients_calls(start_server: ServerFactory, tmp_path: Path) -> None:
    """--front-end-listen: each front end also serves on an address of its own (a unix socket
    with {i}, a TCP port + i), so a client naming them all gets round_robin and reaches every
    front end from one channel, where the shared port leaves it on the one its connection
    hashed to."""
    port = free_port_pair()
    sockets = f"unix://{tmp_path}/front-end-{{i}}.sock"
    server = start_supervised(
        start_server, "--processes", "2", "--summary-interval", "0.5",
        "--front-end-listen", sockets, "--front-end-listen", f"127.0.0.1:{port}",
    )  # fmt: skip
    assert server.proc is not None
    children = child_pids(server.proc.pid)
    try:
        own = {
            r["process"]: r["addresses"] for r in events(server, "listening") if r.get("role") == "frontend"
        }
        assert own == {
            str(i): [server.target, f"unix://{tmp_path}/front-end-{i}.sock", f"127.0.0.1:{port + i}"]
            for i in (0, 1)
        }, own
        for address in (f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"):
            with FaceDetectorClient(address) as client:
                assert client.model_info().name, address
        target = f"unix:{tmp_path}/front-end-0.sock,{tmp_path}/front-end-1.sock"
        with FaceDetectorClient(target, timeout=30) as client:
            for _ in range(12):
                assert len(client.detect(image_bytes("zidane.jpg")).faces) == 2

        def served() -> dict[str, int]:
            counts = {"0": 0, "1": 0}
            for r in events(server, "summary"):
                if r.get("role") == "frontend":
                    counts[r["process"]] += r["ok"]
            return counts

        wait_for(lambda: sum(served().values()) == 12, 10, "the front ends' summaries of 12 calls")
        assert min(served().values()) >= 3, served()  # round_robin, not all on one front end
    finally:
        server.stop()
        kill_leftovers(children)
