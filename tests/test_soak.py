"""The soak command (`python -m facedet_bench.soak`, docs/reliability.md "Soak") runs a few
seconds against a server it starts itself, so it cannot rot: its report says what a long run
says, and it fails where a good request fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from facedet_bench.soak import Sample, growth_pct, sample_at
from facedet_test_support import EXPECTED_FACES, IMAGES, MODEL, REPO, clean_env, require


def soak(tmp_path: Path, *args: str) -> tuple[int, dict[str, object]]:
    report = tmp_path / "soak.json"
    command = [sys.executable, "-m", "facedet_bench.soak", "--model", str(require(MODEL, "model file"))]
    command += ["--duration", "5", "--warm-up", "1", "--sample-interval", "1", "--json", str(report), *args]
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, env=clean_env(), cwd=REPO, timeout=180
    )
    assert report.exists(), result.stderr
    return result.returncode, json.loads(report.read_text())


@pytest.mark.timeout(240)
def test_soak_smoke(tmp_path: Path) -> None:
    code, report = soak(tmp_path, "--bad-fraction", "0.2", "--image", str(IMAGES / "zidane.jpg"))
    assert code == 0, report
    assert report["passed"] is True
    assert report["good_by_status"] == {"OK": report["served_ok"]}
    served = report["served_ok"]
    assert isinstance(served, int) and served > 10
    bad = report["bad_by_status"]
    assert isinstance(bad, dict) and set(bad) == {"INVALID_ARGUMENT"}, bad
    assert report["faces_per_image"] == EXPECTED_FACES["zidane.jpg"]
    # A 5 s run has 1.25 s windows: the first may close before a call ends; the last cannot.
    assert "p99_ms_first_window" in report and report["p99_ms_last_window"] is not None
    assert isinstance(report["rss_mib_end"], float) and report["rss_mib_end"] > 50
    assert report["rss_checked"] is False  # 5 s is all warm-up
    assert report["server_exit"] == 0


@pytest.mark.timeout(240)
def test_soak_fails_when_good_requests_fail(tmp_path: Path) -> None:
    not_an_image = tmp_path / "not-an-image.jpg"
    not_an_image.write_bytes(b"plain text")
    code, report = soak(tmp_path, "--image", str(not_an_image))
    assert code == 1
    assert report["passed"] is False
    checks = report["checks"]
    assert isinstance(checks, dict) and checks["good_requests_all_ok"] is False
    bad = report["bad_by_status"]
    requests = report["requests"]
    assert isinstance(bad, dict) and isinstance(requests, int)
    assert report["good_by_status"] == {"INVALID_ARGUMENT": requests - sum(bad.values())}


@pytest.mark.timeout(240)
def test_soak_measures_the_whole_process_tree(tmp_path: Path) -> None:
    """With --processes the work is in the server's children: their memory is the server's."""
    code, report = soak(tmp_path, "--server-arg=--processes", "--server-arg=2")
    assert code == 0, report
    processes = report["server_processes"]
    assert isinstance(processes, int) and processes >= 3, report  # the supervisor and two pipelines
    rss = report["rss_mib_end"]
    # Two ONNX Runtime pipelines hold well over one process's ~100 MiB of Python and libraries.
    assert isinstance(rss, float) and rss > 2 * 100, report
    assert report["server_exit"] == 0


def plateau(at: float, low: float, high: float, end: float = 600.0) -> list[Sample]:
    """GPU samples every 5 s climbing linearly from `low` to `high` until `at` s, flat after."""
    return [(t, 4500.0, low + (high - low) * min(t, at) / at) for t in range(0, int(end) + 1, 5)]


def test_a_caching_allocator_plateau_is_not_growth_but_a_leak_is() -> None:
    """The GPU soak's rule: growth over the second half. The H200 run's shape (climbing for the
    first 120 s, flat for the last 480 s) passes; memory that keeps climbing does not."""
    warmed = plateau(at=120, low=11_672, high=16_596)
    after_first_minute = growth_pct(warmed, 2, since=60)
    assert after_first_minute is not None and after_first_minute > 5  # the old rule's false alarm
    assert growth_pct(warmed, 2, since=300) == 0.0
    leaking = plateau(at=600, low=11_672, high=16_596)
    second_half = growth_pct(leaking, 2, since=300)
    assert second_half is not None and second_half > 5


def test_samples_without_a_value_are_skipped() -> None:
    samples: list[Sample] = [(0.0, 100.0, None), (5.0, 110.0, None), (10.0, 121.0, 50.0)]
    assert sample_at(samples, 0, 2) == 50.0  # the first sample that has a GPU value
    assert growth_pct(samples, 1, since=5) == 10.0
    assert growth_pct(samples, 2, since=11) is None  # nothing at or after 11 s
    assert growth_pct([], 1, since=0) is None
