"""`facedet bench` runs briefly in each mode and prints its metrics (speed is not asserted: that is
what docs/benchmarks.md is for)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from facedet.cli import main
from facedet.v1 import face_detector_pb2 as pb
from facedet_bench import load as bench
from facedet_server.app.config import ServerConfig, add_arguments, from_args

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
    out = capsys.readouterr().out
    assert "grpc: concurrency 2, 1 client process, 1 s" in out
    for label in ("img/s", "p50", "p90", "p99", "max", "decode", "queue", "inference", "postprocess"):
        assert label in out


def test_open_loop_offers_the_rate_asked(server: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    # 4 img/s is well under this machine's capacity, so the achieved rate is the offered one.
    args = ["bench", "--server", server[0], "--image", str(ZIDANE), "--rate", "4", "--concurrency", "8"]
    assert main([*args, "--duration", "3", "--warmup", "0.5", "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert 3.0 <= run["img_per_s"] <= 5.0
    assert main([*args, "--stream"]) == 2  # open loop is for unary calls


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
