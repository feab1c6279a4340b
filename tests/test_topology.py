"""Process topology: the automatic --processes and front-end addresses, engines placed per GPU,
the front ends' own addresses published in GetModelInfo and used by the Python client, and an
engine that dies under load restarted by the supervisor while the other engines keep serving.

The placement rules are pure functions, tested for GPU machines too; the processes run on the
CPU (ONNX Runtime engines), as the GPU variants under tests/gpu/ do on a GPU."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from facedet.client import FaceDetectorClient
from facedet.client.discovery import dialable, dialed_host, list_target
from facedet.v1 import face_detector_pb2 as pb
from facedet_server.app import supervisor, topology
from facedet_server.app.config import ServerConfig, add_arguments, from_args
from facedet_server.app.topology import (
    Layout,
    automatic_front_end_listen,
    automatic_front_ends,
    engine_of,
    gpus_for_engines,
    own_addresses,
    place_engines,
    resolve,
)
from facedet_test_support import (
    MODEL,
    Server,
    ServerFactory,
    clean_env,
    detect_request,
    facedet_command,
    free_port,
    health_status,
    image_bytes,
    wait_for,
)
from grpc_health.v1 import health_pb2

LIGHT = ("--decode-threads", "1", "--intra-op-threads", "1", "--batch-workers", "1")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RESUME_WITHIN_S = 30.0  # restart delay (1 s) + an engine's start on a busy 2-core machine


def parse(argv: list[str]) -> ServerConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser, {})
    return from_args(parser.parse_args(argv))


def events(server: Server, name: str) -> list[dict[str, Any]]:
    return [r for r in server.log_records() if r.get("event") == name]


# --- the rules, as pure functions ------------------------------------------------------------


def test_processes_auto_is_the_default_and_a_flag_value() -> None:
    assert ServerConfig().processes == 0
    assert parse(["--processes", "auto"]).processes == 0
    assert parse(["--processes", "AUTO"]).processes == 0
    assert parse(["--processes", "3"]).processes == 3
    with pytest.raises(SystemExit):
        parse(["--processes", "many"])


def test_automatic_front_ends_follow_the_gpus_and_cpus() -> None:
    # The H200 machine of the measurements: 16 CPUs, one GPU -> the 4 front ends that won.
    assert automatic_front_ends(gpus=1, cpus=16, engines=1) == 4
    assert automatic_front_ends(gpus=8, cpus=128, engines=8) == 32  # 4 per GPU
    assert automatic_front_ends(gpus=2, cpus=32, engines=2) == 8
    assert automatic_front_ends(gpus=1, cpus=8, engines=1) == 2  # CPUs // 4
    assert automatic_front_ends(gpus=1, cpus=2, engines=1) == 1  # too few CPUs: one process
    assert automatic_front_ends(gpus=8, cpus=16, engines=8) == 8  # at least one per engine
    assert automatic_front_ends(gpus=0, cpus=64, engines=1) == 1  # the CPU: one process


def test_cpu_topology_is_unchanged() -> None:
    resolved, gpus = resolve(parse([]), on_gpu=False, visible_gpus=0, cpus=64)
    assert (resolved.processes, resolved.front_end_listen, gpus) == (1, [], [])
    assert resolved == ServerConfig(processes=1)


def test_gpu_topology_gets_front_ends_with_their_own_ports() -> None:
    resolved, gpus = resolve(parse([]), on_gpu=True, visible_gpus=1, cpus=16)
    assert (resolved.processes, gpus) == (4, ["cuda:0"])
    assert resolved.front_end_listen == ["0.0.0.0:50052"]
    assert [own_addresses(resolved.front_end_listen, i) for i in range(4)] == [
        ["0.0.0.0:50052"], ["0.0.0.0:50053"], ["0.0.0.0:50054"], ["0.0.0.0:50055"]
    ]  # fmt: skip
    # The user's own addresses stay; `none` gives them none.
    given, _ = resolve(parse(["--front-end-listen", "127.0.0.1:6000"]), on_gpu=True, visible_gpus=1, cpus=16)
    assert given.front_end_listen == ["127.0.0.1:6000"]
    off, _ = resolve(parse(["--front-end-listen", "none"]), on_gpu=True, visible_gpus=1, cpus=16)
    assert off.front_end_listen == ["none"] and own_addresses(off.front_end_listen, 2) == []
    # A unix --listen socket cannot be shared: one front end per engine.
    unix, _ = resolve(parse(["--listen", "unix:///tmp/f.sock"]), on_gpu=True, visible_gpus=1, cpus=16)
    assert unix.processes == 1
    # A GPU backend on a machine that shows none: the CPU's topology.
    none_visible, gpus = resolve(parse(["--backend", "torch"]), on_gpu=True, visible_gpus=0, cpus=16)
    assert (none_visible.processes, gpus) == (1, [])


def test_automatic_front_end_listen_takes_the_first_tcp_address() -> None:
    assert automatic_front_end_listen(["unix:///a.sock", "10.0.0.1:7000", "[::]:8000"]) == ["10.0.0.1:7001"]
    assert automatic_front_end_listen(["[::]:8000"]) == ["[::]:8001"]
    assert automatic_front_end_listen(["unix:///a.sock"]) == []
    # A clash with --listen is refused once resolved, as for a given --front-end-listen.
    with pytest.raises(ValueError, match="which --listen already has"):
        resolve(parse(["--listen", "127.0.0.1:7000", "--listen", "127.0.0.1:7002"]), True, 1, 16)


def test_devices_pick_the_gpus() -> None:
    assert gpus_for_engines("auto", "cuda:0", visible=4, front_ends=0, per_device=1) == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:3"
    ]  # fmt: skip
    assert gpus_for_engines("auto", "cuda:2", visible=4, front_ends=0, per_device=1) == ["cuda:2"]
    assert gpus_for_engines("auto", "cuda:0", visible=4, front_ends=2, per_device=1) == ["cuda:0", "cuda:1"]
    assert gpus_for_engines("all", "cuda:3", visible=2, front_ends=0, per_device=1) == ["cuda:0", "cuda:1"]
    assert gpus_for_engines("1,3", "cuda:0", visible=4, front_ends=0, per_device=2) == ["cuda:1", "cuda:3"]
    assert gpus_for_engines("auto", "cuda:0", visible=0, front_ends=0, per_device=1) == []
    with pytest.raises(ValueError, match="GPU 2 is not visible"):
        gpus_for_engines("0,2", "cuda:0", visible=2, front_ends=0, per_device=1)
    for bad, complaint in (("gpu0", "expected auto, all"), ("0,0", "names a GPU twice"), ("", "expected")):
        with pytest.raises(ValueError, match=complaint):
            parse(["--devices", bad])


def test_engines_are_placed_per_gpu_and_front_ends_spread_over_them() -> None:
    places = place_engines(["cuda:0", "cuda:1"], per_device=2)
    assert [(p.name, p.device) for p in places] == [
        ("engine-0", "cuda:0"), ("engine-1", "cuda:0"), ("engine-2", "cuda:1"), ("engine-3", "cuda:1")
    ]  # fmt: skip
    assert [(p.name, p.device) for p in place_engines([], per_device=1)] == [("engine", "")]
    # 8 front ends over 2 GPUs of one engine each: 4 each, alternating.
    assert [engine_of(i, 2) for i in range(8)] == [0, 1, 0, 1, 0, 1, 0, 1]
    resolved, gpus = resolve(parse([]), on_gpu=True, visible_gpus=2, cpus=32)
    assert (resolved.processes, gpus) == (8, ["cuda:0", "cuda:1"])
    with pytest.raises(ValueError, match="need at least 4 front ends"):
        resolve(parse(["--processes", "2", "--engines", "2", "--devices", "all"]), True, 2, 32)


def test_layout_travels_through_the_environment() -> None:
    layout = Layout(
        [["127.0.0.1:1"], ["127.0.0.1:2"]], [("engine-0", "cuda:0", "/s0"), ("engine-1", "cuda:1", "/s1")]
    )
    back = Layout.from_env({topology.TOPOLOGY_ENV: layout.to_env(1)})
    assert back == Layout(layout.front_ends, layout.engines, engine=1)
    assert back.published_addresses == ["127.0.0.1:1", "127.0.0.1:2"]
    assert Layout.from_env({}) is None


def test_restart_delay_doubles_up_to_its_cap() -> None:
    assert [supervisor.restart_delay(n) for n in (1, 2, 3, 6, 20)] == [1.0, 2.0, 4.0, 30.0, 30.0]


def test_client_dials_what_the_server_published() -> None:
    assert dialed_host("10.0.0.5:50051") == "10.0.0.5"
    assert dialed_host("dns:///localhost:50051") == "localhost"
    for untouched in ("unix:///a.sock", "ipv4:1.2.3.4:1,1.2.3.4:2", "unix:/a,/b"):
        assert dialed_host(untouched) is None
    # Wildcards mean the host dialed; names resolve to literals (gRPC's lists take literals).
    assert dialable(["0.0.0.0:50052", "0.0.0.0:50053"], "127.0.0.1:50051") == [
        "127.0.0.1:50052",
        "127.0.0.1:50053",
    ]
    assert dialable(["[::]:7001"], "localhost:7000") == ["127.0.0.1:7001"]
    assert dialable(["[::1]:7001", "unix:///x.sock", "junk"], "[::1]:7000") == ["[::1]:7001"]
    assert dialable(["0.0.0.0:50052"], "unix:///a.sock") == []
    assert list_target(["127.0.0.1:1", "127.0.0.1:2"]) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert list_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"


# --- real processes --------------------------------------------------------------------------


def start_split(start_server: ServerFactory, *args: str, fronts: int = 2, name: str = "split") -> Server:
    """`facedet serve --processes N --engine-process on` (automatic front-end addresses),
    SERVING on every front end's own address."""
    server = start_server(
        "--processes", str(fronts), "--engine-process", "on", *LIGHT, *args, unix=False, name=name
    )
    wait_for(
        lambda: len([r for r in events(server, "serving") if r.get("role") == "frontend"]) == fronts,
        60,
        f"{fronts} front ends to log serving",
    )
    return server


def own_targets(server: Server, fronts: int) -> list[str]:
    assert server.port is not None
    return [f"127.0.0.1:{server.port + 1 + i}" for i in range(fronts)]


def engine_pids(server: Server) -> dict[str, int]:
    """Each engine's latest pid, from the supervisor's engine_started lines."""
    return {r["engine"]: r["pid"] for r in events(server, "engine_started")}


def front_end_ok_counts(server: Server) -> Counter[str]:
    """Calls answered OK per front end (FACEDET_PROCESS_INDEX), from their summary lines."""
    counts: Counter[str] = Counter()
    for record in events(server, "summary"):
        if record.get("role") == "frontend":
            counts[record["process"]] += record.get("ok", 0)
    return counts


@pytest.fixture(scope="module")
def split(module_server_factory: ServerFactory) -> Server:
    return start_split(module_server_factory, "--summary-interval", "0.5")


def test_model_info_publishes_every_front_end_and_the_engine(split: Server) -> None:
    own = own_targets(split, 2)
    (announced,) = events(split, "engine_process")
    assert announced["front_end_addresses"] == own
    for target in [split.target, *own]:
        with split.stub(target) as stub:
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert list(info.front_end_addresses) == own, target
        assert [(e.name, e.device, e.serving) for e in info.engines] == [("engine", "cpu", True)]
        assert health_status(target) == SERVING


def test_client_spreads_its_calls_over_the_front_ends(split: Server) -> None:
    data = image_bytes("zidane.jpg")
    before = front_end_ok_counts(split)
    with FaceDetectorClient(split.target, timeout=30) as client:
        for _ in range(20):
            assert len(client.detect(data).faces) == 2
        assert sorted(client.front_ends) == own_targets(split, 2)

    def both_counted() -> bool:
        got = front_end_ok_counts(split) - before
        return sum(got.values()) == 20 and len(got) == 2 and min(got.values()) >= 5

    wait_for(both_counted, 10, "both front ends to count calls (round_robin over their own ports)")
    # Discovery off: one connection to the shared port, so one front end gets every call.
    before = front_end_ok_counts(split)
    with FaceDetectorClient(split.target, timeout=30, discover_front_ends=False) as client:
        for _ in range(20):
            assert len(client.detect(data).faces) == 2
        assert client.front_ends == []
    wait_for(lambda: sum((front_end_ok_counts(split) - before).values()) == 20, 10, "20 calls counted")
    assert len(front_end_ok_counts(split) - before) == 1


@dataclass
class KillUnderLoad:
    """What clients saw around an engine SIGKILLed under load (`kill_engine_under_load`)."""

    statuses: Counter[str]
    health_seen: set[int]
    first_pid: int
    resumed_after_s: float | None  # from the kill to the first OK after it


def kill_engine_under_load(
    server: Server,
    targets: list[str],
    engine: str = "engine",
    clients: int = 4,
    resume_within: float = RESUME_WITHIN_S,
) -> KillUnderLoad:
    """`clients` threads calling DetectFaces over `targets` (front ends' own addresses) while
    `engine` is SIGKILLed; returns once a call succeeded again and health is back to SERVING on
    targets[0] (at most `resume_within` s), after 2 s more of load on the restarted engine."""
    data = image_bytes("zidane.jpg")
    statuses: Counter[str] = Counter()
    ok_after_kill: list[float] = []
    killed_at: list[float] = []
    stop = threading.Event()

    def load(target: str) -> None:
        with grpc.insecure_channel(target) as channel:
            detect = channel.unary_unary(
                "/facedet.v1.FaceDetector/DetectFaces",
                request_serializer=pb.DetectFacesRequest.SerializeToString,
                response_deserializer=pb.DetectFacesResponse.FromString,
            )
            while not stop.is_set():
                try:
                    detect(detect_request(data), timeout=20)
                    statuses["OK"] += 1
                    if killed_at:
                        ok_after_kill.append(time.monotonic())
                except grpc.RpcError as exc:
                    statuses[exc.code().name] += 1
                    time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(targets[i % len(targets)],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    health_seen: set[int] = set()
    try:
        wait_for(lambda: statuses["OK"] >= 2 * clients, 60, "load to flow")
        first_pid = engine_pids(server)[engine]
        os.kill(first_pid, signal.SIGKILL)
        killed_at.append(time.monotonic())
        deadline = killed_at[0] + resume_within
        while time.monotonic() < deadline and not (ok_after_kill and SERVING in health_seen):
            with contextlib.suppress(grpc.RpcError):
                health_seen.add(health_status(targets[0], timeout=1))
            time.sleep(0.05)
        time.sleep(2)  # more load on the restarted engine
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    resumed = min(ok_after_kill) - killed_at[0] if ok_after_kill else None
    return KillUnderLoad(statuses, health_seen, first_pid, resumed)


def test_sigkilled_engine_under_load_is_restarted_and_service_resumes(start_server: ServerFactory) -> None:
    server = start_split(start_server, name="restart")
    own = own_targets(server, 2)
    seen = kill_engine_under_load(server, own)
    statuses = seen.statuses
    print(f"\nkill under load: {dict(statuses)}, first OK {seen.resumed_after_s} s after the kill")
    assert seen.resumed_after_s is not None, (
        f"no call succeeded within {RESUME_WITHIN_S} s of the kill: {statuses}\n{server.log_text()}"
    )
    assert set(statuses) <= {"OK", "UNAVAILABLE"}, statuses
    assert statuses["UNAVAILABLE"] > 0, f"the engine's death was never seen: {statuses}"
    assert NOT_SERVING in seen.health_seen, (
        f"health never turned NOT_SERVING while the engine was down: {seen.health_seen}"
    )
    server.check_alive()
    (exited,) = events(server, "engine_exited")
    assert exited["code"] == -signal.SIGKILL and exited["pid"] == seen.first_pid
    assert exited["action"] == "restarting in 1 s"
    (second_pid,) = engine_pids(server).values()
    assert second_pid != seen.first_pid and len(events(server, "engine_started")) == 2
    assert len(events(server, "engine_down")) == 2 and len(events(server, "engine_back")) == 2
    with server.stub(own[1]) as stub:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert [(e.name, e.serving) for e in info.engines] == [("engine", True)]
    assert server.stop() == 0, server.log_text()


def test_one_engine_of_two_dies_the_other_keeps_serving(start_server: ServerFactory) -> None:
    """--engines 2 (several engines on one device, as on one GPU): front end 1 feeds engine-1.
    Killing engine-1 leaves front end 0 serving without an error; GetModelInfo and the
    facedet_engine_serving metric show engine-1 down, and then back."""
    metrics = f"127.0.0.1:{free_port()}"
    server = start_split(start_server, "--engines", "2", "--metrics-listen", metrics, name="two-engines")
    own = own_targets(server, 2)
    data = image_bytes("zidane.jpg")
    pids = engine_pids(server)
    assert set(pids) == {"engine-0", "engine-1"}

    def engine_gauge(engine: str) -> float | None:
        text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith("facedet_engine_serving{") and f'engine="{engine}"' in line:
                assert 'device="cpu"' in line, line
                return float(line.rsplit(" ", 1)[1])
        return None

    wait_for(lambda: engine_gauge("engine-1") == 1.0 == engine_gauge("engine-0"), 10, "both engines up")
    os.kill(pids["engine-1"], signal.SIGKILL)
    wait_for(lambda: health_status(own[1]) == NOT_SERVING, 10, "front end 1 to turn NOT_SERVING")
    # The restart waits 1 s, then the engine loads its model: time enough to see it down.
    wait_for(lambda: engine_gauge("engine-1") == 0.0, 5, "the engine-1 gauge to drop to 0")
    assert engine_gauge("engine-0") == 1.0
    with server.stub(own[0]) as stub:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        states = {e.name: e.serving for e in info.engines}
        for _ in range(5):  # front end 0's engine is untouched
            assert len(stub.DetectFaces(detect_request(data), timeout=30).faces) == 2
    assert health_status(own[0]) == SERVING
    # engine-1 may already be back (1 s restart delay); then it shows up serving.
    assert states["engine-0"] is True and set(states) == {"engine-0", "engine-1"}
    wait_for(lambda: health_status(own[1]) == SERVING, RESUME_WITHIN_S, "front end 1 back to SERVING")
    wait_for(lambda: engine_gauge("engine-1") == 1.0, 10, "the engine-1 gauge back to 1")
    with server.stub(own[1]) as stub:
        assert len(stub.DetectFaces(detect_request(data), timeout=30).faces) == 2
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert {e.name: e.serving for e in info.engines} == {"engine-0": True, "engine-1": True}
    after = engine_pids(server)
    assert after["engine-0"] == pids["engine-0"] and after["engine-1"] != pids["engine-1"]
    assert [r["engine"] for r in events(server, "engine_exited")] == ["engine-1"]


def test_an_engine_dying_past_its_restart_limit_stops_the_server(start_server: ServerFactory) -> None:
    server = start_split(start_server, "--engine-restarts", "1", name="limit")
    assert server.proc is not None
    for death in range(2):
        pid = engine_pids(server)["engine"]
        os.kill(pid, signal.SIGKILL)
        if death == 0:
            wait_for(
                lambda: len(events(server, "engine_serving")) == 2, 60, "the engine to be restarted once"
            )
    code = server.wait_exit(30)
    assert code != 0, server.log_text()
    exited = events(server, "engine_exited")
    assert [r["action"] for r in exited] == [
        "restarting in 1 s", "stopping the front ends (restart limit reached)"
    ]  # fmt: skip
    assert exited[1]["deaths_in_window"] == 2


def test_a_front_end_that_cannot_listen_stops_the_server(tmp_path: Path) -> None:
    """Front end 1's own port (--listen's + 2) is some connection's local port: that front end
    cannot listen, and the server exits non-zero saying so, rather than serve on with half its
    front ends and a published address that refuses calls."""
    listener = socket.create_server(("127.0.0.1", 0))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.connect(listener.getsockname())
    port = taken.getsockname()[1] - 2
    log = tmp_path / "server.log"
    with listener, taken, open(log, "wb") as out:
        command = facedet_command("serve", "--listen", f"127.0.0.1:{port}", "--processes", "2")
        command += ["--engine-process", "on", *LIGHT, "--log-format", "json"]
        proc = subprocess.Popen(command, env=clean_env({"FACEDET_MODEL": str(MODEL)}), stdout=out, stderr=out)
        try:
            code = proc.wait(90)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert code != 0, text
    assert f"cannot listen on 127.0.0.1:{port + 2}" in text, text
    (exited,) = [json.loads(line) for line in text.splitlines() if '"frontend_exited"' in line]
    assert exited["process"] == 1 and exited["code"] == code, exited
