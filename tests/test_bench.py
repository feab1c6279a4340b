"""`facedet bench` runs briefly in each mode and prints its metrics (speed is not asserted: that is
what docs/benchmarks.md is for), fails (exit 1) when requests do, stops early when the server
dies, and shows its progress on a terminal only."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from facedet.cli import main
from facedet.v1 import face_detector_pb2 as pb
from facedet_bench import load as bench
from facedet_bench import progress
from facedet_bench.reachability import Reachability, backoff_s
from facedet_server.app.config import ServerConfig, add_arguments, from_args
from facedet_test_support import REPO, ServerFactory, clean_env, facedet_command, wait_for

SHARED = Path(os.environ.get("FACEDET_SHARED") or Path(__file__).resolve().parents[2] / "shared")
MODEL = Path(os.environ.get("FACEDET_MODEL") or SHARED / "models" / "yolov5n-0.5.onnx")
ZIDANE = SHARED / "images" / "zidane.jpg"
SHORT = ["--duration", "1", "--warmup", "0.3"]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    """(target, pid) of the server bench itself starts for --compare."""
    assert MODEL.is_file(), f"model not found at {MODEL}; set FACEDET_MODEL"
    with bench.spawned_server(ServerConfig(model=str(MODEL))) as started:
        yield started


def check_run(run: dict[str, Any], mode: str) -> None:
    assert run["mode"] == mode
    assert run["requests"] > 0 and run["img_per_s"] > 0
    assert run["errors"] == {}
    assert set(run["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}
    server_ms = run["server_ms"]
    assert set(server_ms) == {"decode", "queue", "inference", "postprocess", "total", "batch_size"}
    assert server_ms["inference"] > 0 and server_ms["batch_size"] >= 1


def test_in_process_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--in-process", "--model", str(MODEL), "--image", str(ZIDANE), "--concurrency", "2"]
    assert main([*args, *SHORT, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["machine"]["cpus"] >= 1
    (run,) = result["runs"]
    check_run(run, "in-process")
    assert run["concurrency"] == 2 and "process" in run["cpu_ms_per_img"]


def test_grpc_unary_prints_the_metrics(server: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--server", server[0], "--image", str(ZIDANE), "--concurrency", "2", *SHORT]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "grpc: concurrency 2, 1 client process, 1 s" in out
    assert err == ""  # stderr is no terminal here: no progress line
    for label in ("img/s", "p50", "p90", "p99", "max", "decode", "queue", "inference", "postprocess"):
        assert label in out


def test_open_loop_offers_the_rate_asked(server: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    # 4 img/s is well under this machine's capacity, so the achieved rate is the offered one.
    args = ["bench", "--server", server[0], "--image", str(ZIDANE), "--rate", "4", "--concurrency", "8"]
    assert main([*args, "--duration", "3", "--warmup", "0.5", "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert 3.0 <= run["img_per_s"] <= 5.0
    assert main([*args, "--stream"]) == 2  # open loop is for unary calls


def test_open_loop_holds_the_rate_with_no_concurrency_given(
    server: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    # Without --concurrency the in-flight cap is sized for the rate (it used to be 1, which holds
    # at most 1/latency requests a second); 12 img/s is what this shared 2-core machine holds.
    args = ["bench", "--server", server[0], "--image", str(ZIDANE), "--rate", "12"]
    assert main([*args, "--duration", "3", "--warmup", "0.5", "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert run["concurrency"] == bench.open_loop_in_flight(12) >= 32
    assert run["delayed_by_in_flight_cap"] == 0 and run["offered_img_per_s"] == 12
    assert 9.0 <= run["img_per_s"] <= 14.0
    # A cap the rate cannot be held under is said, and is no failure.
    args = ["bench", "--server", server[0], "--image", str(ZIDANE), "--rate", "200", "--concurrency", "1"]
    assert main([*args, "--duration", "1", "--warmup", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "  offered 200 img/s, achieved " in out and "requests were delayed by the in-flight cap (1;" in out


def test_failed_requests_exit_1_and_say_which(
    server: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_bytes(b"not an image")  # the server rejects every request
    args = ["bench", "--server", server[0], "--image", str(not_an_image), "--duration", "0.5"]
    assert main([*args, "--warmup", "0.1"]) == 1
    out, err = capsys.readouterr()
    assert "errors: INVALID_ARGUMENT" in out
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"facedet bench: (\d+) requests failed: INVALID_ARGUMENT \1", last), last


def _bench_on_a_terminal(*args: str) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """`facedet bench ARGS` with stderr on a pty (a terminal, as a user's) and stdout a pipe;
    the list fills with what it writes to the terminal, until the thread ends."""
    terminal, child_end = pty.openpty()
    bench_process = subprocess.Popen(
        facedet_command("bench", *args),
        stdout=subprocess.PIPE,
        stderr=child_end,
        text=True,
        env=clean_env(),
        cwd=REPO,
    )
    os.close(child_end)
    written: list[str] = []

    def read() -> None:
        with open(terminal, "rb", buffering=0) as reader:
            while True:
                try:
                    chunk = reader.read(4096)
                except OSError:  # EIO: the process exited and closed the terminal
                    return
                if not chunk:
                    return
                written.append(chunk.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return bench_process, written, reader


def test_progress_on_a_terminal_only(server: tuple[str, int]) -> None:
    bench_process, written, reader = _bench_on_a_terminal(
        "--server", server[0], "--image", str(ZIDANE), "--duration", "1", "--warmup", "0.2"
    )
    out, _ = bench_process.communicate(timeout=60)
    reader.join(10)
    assert bench_process.returncode == 0
    assert out.startswith("machine: ") and "\r" not in out and "grpc: concurrency 1" in out
    shown = "".join(written)
    assert "grpc concurrency 1: warming up" in shown
    assert "/1 s, " in shown and " img/s, 0 errors" in shown
    assert shown.endswith(progress.CLEAR)  # erased before the report


def test_a_server_that_dies_ends_the_run_early(start_server: ServerFactory) -> None:
    dying = start_server(unix=False)
    bench_process, written, reader = _bench_on_a_terminal(
        "--server", dying.target, "--image", str(ZIDANE), "--concurrency", "2", "--duration", "60"
    )
    try:
        # Killed once the measured window has counted answers (the progress line says so).
        wait_for(lambda: " requests, " in "".join(written), 60, "answers counted")
        assert dying.proc is not None
        dying.proc.kill()
        killed = time.monotonic()
        out, _ = bench_process.communicate(timeout=30)
        reader.join(10)
    finally:
        if bench_process.poll() is None:
            bench_process.kill()
    # Stopped some GIVE_UP_S after the server died, not at the end of its 60 s.
    assert time.monotonic() - killed < 20
    assert bench_process.returncode == 1
    assert "ended early, after " in out and "errors: UNAVAILABLE " in out
    lines = "".join(written).replace(progress.CLEAR, "\n").splitlines()
    messages = [line.strip() for line in lines if line.startswith("facedet bench: ")]
    assert "the server was unreachable (UNAVAILABLE) for 5 s" in messages[-2]
    assert " requests failed: UNAVAILABLE " in messages[-1]


def test_in_process_with_a_missing_model_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.onnx"
    args = ["bench", "--in-process", "--model", str(missing), "--image", str(ZIDANE), *SHORT]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"facedet bench: model file {missing} does not exist") and err.count("\n") == 1


def test_grpc_stream_in_two_processes(server: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--server", server[0], "--image", str(ZIDANE), "--stream", "--window", "2"]
    args += ["--concurrency", "2", "--processes", "2", "--json", *SHORT]
    assert main(args) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    check_run(run, "grpc-stream")
    assert (run["processes"], run["window"]) == (2, 2)


def test_compare_prints_the_ratio_table(server: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--compare", "--server", server[0], "--model", str(MODEL), "--image", str(ZIDANE)]
    assert main([*args, "--concurrency", "1", *SHORT]) == 0
    out = capsys.readouterr().out
    assert "| concurrency | in-process img/s | gRPC img/s | ratio (min–max) |" in out
    assert "goal single-client p50 within 2 ms of in-process" in out
    assert "in-process: concurrency 1" in out and "grpc: concurrency 1" in out


def test_unreachable_server_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--server", f"127.0.0.1:{bench.free_port()}", "--image", str(ZIDANE)]
    assert main([*args, "--duration", "0.2", "--warmup", "0"]) == 1
    assert "facedet bench:" in capsys.readouterr().err


def test_helpers() -> None:
    assert bench.split(16, 1) == [16]
    assert bench.split(5, 2) == [3, 2]
    assert bench.split(2, 8) == [1, 1]
    argv = bench.serve_argv(ServerConfig(model="m.onnx", max_batch=4), "127.0.0.1:1")
    assert argv[argv.index("--max-batch") + 1] == "4"
    assert argv[argv.index("--listen") + 1] == "127.0.0.1:1" and argv.count("--listen") == 1
    config = bench.server_settings(str(MODEL), ["max_batch=4", "max-delay-ms=1.5"])
    assert (config.model, config.max_batch, config.max_delay_ms) == (str(MODEL), 4, 1.5)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        bench.server_settings(None, ["no_such_setting=1"])
    with pytest.raises(ValueError):
        bench.server_settings(None, ["max_batch=lots"])
    load = bench.Load(concurrency=1, warmup=0, duration=1.0)
    fast, slow = bench.Samples(), bench.Samples()
    for _ in range(10):
        fast.add(0.030, pb.Timing(total_us=29_000, batch_size=1))
    for _ in range(9):
        slow.add(0.033, pb.Timing(total_us=29_000, batch_size=1))
    local, remote = bench.Report.of("in-process", load, 0, fast), bench.Report.of("grpc", load, 1, slow)
    assert (local.img_per_s, local.latency_ms["p50"], local.server_ms["total"]) == (10.0, 30.0, 29.0)
    (row,) = bench.comparison([local, local], [remote, local])
    assert (row["runs"], row["ratio_min"], row["ratio_max"]) == (2, 0.9, 1.0)
    lines = bench.comparison_lines([row])
    assert lines[-1].startswith("goal single-client p50 within 2 ms of in-process: +1.50 ms met")
    assert bench.open_loop_in_flight(12) == 32 and bench.open_loop_in_flight(2000) == 500


def test_backoff_and_giving_up() -> None:
    assert [backoff_s(n) for n in (1, 2, 3)] == [0.01, 0.02, 0.04]
    assert backoff_s(30) == 0.5  # capped
    reachability = Reachability(give_up_s=5.0)
    reachability.unavailable(100.0)
    reachability.unavailable(104.0)
    reachability.answered()  # any answer restarts the outage's clock
    reachability.unavailable(104.5)
    reachability.unavailable(109.0)
    assert not reachability.stopped.is_set()
    reachability.unavailable(109.5)
    assert reachability.stopped.is_set() and reachability.stopped_at == 109.5


def test_progress_line() -> None:
    values = progress.shared_values(2)
    progress.Slot(values, 0).publish(30, 1, 1.5)
    progress.Slot(values, 1).publish(20, 0, 2.0)
    line = progress.progress_line("grpc concurrency 4", progress.snapshot(values, 3.0), 10.0)
    assert line == "grpc concurrency 4: 2.0/10 s, 50 requests, 25.0 img/s, 1 errors"
    warming = progress.progress_line("x", progress.snapshot(progress.shared_values(1), 0.4), 10.0)
    assert warming == "x: warming up, 0.4 s"


def test_compare_reruns_noisy_pairs(server: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    # A negative threshold makes every pair "noisy": two are re-run, the third is kept regardless.
    args = ["bench", "--compare", "--server", server[0], "--model", str(MODEL), "--image", str(ZIDANE)]
    args += ["--duration", "0.5", "--warmup", "0.1", "--max-other-cpu", "-1", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["discarded_as_noisy"]) == 4
    assert [row["runs"] for row in result["comparison"]] == [1]


@pytest.mark.parametrize(
    "config",
    [
        ServerConfig(model="m.onnx"),
        ServerConfig(
            model="m.onnx",
            max_batch=4,
            processes=2,
            front_end_listen=["unix:///tmp/fe-{i}.sock", "127.0.0.1:9000"],
        ),
    ],
)
def test_serve_argv_gives_back_the_same_configuration(config: ServerConfig) -> None:
    """What `--compare` starts is the server it describes: the argv parses back into `config`
    (every setting, lists included), on the address given."""
    argv = bench.serve_argv(config, "127.0.0.1:1")
    parser = argparse.ArgumentParser()
    add_arguments(parser, {})
    parsed = from_args(parser.parse_args(argv[argv.index("serve") + 1 :]))
    assert parsed == replace(config, listen=["127.0.0.1:1"])


def test_one_address_of_several_front_ends_is_spread_over_them(
    start_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """As facedet.client does: the front ends' own addresses from GetModelInfo, round_robin."""
    server = start_server("--processes", "2", "--engine-process", "on", unix=False)
    args = ["bench", "--server", server.target, "--image", str(ZIDANE), "--concurrency", "4", *SHORT]
    args.append("--json")
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    port = server.port
    assert port is not None
    assert result["server"] == f"ipv4:127.0.0.1:{port + 1},127.0.0.1:{port + 2}", result["server"]
    check_run(result["runs"][0], "grpc")
