"""Scale-out on one machine: three replicas behind one client target (gRPC round_robin over an
`ipv4:` list, wait-for-ready and retries on UNAVAILABLE from the client's service config).
SIGKILL one under steady load: no call fails, the load moves to the survivors, and the replica
restarted on its port gets calls again."""

from __future__ import annotations

import re
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable

from facedet.client import FaceDetectorClient
from facedet_test_support import Server, ServerFactory, free_port, image_bytes, wait_for

REPLICAS = 3
CALLERS = 4
OK_COUNT = re.compile(r'^facedet_requests_total\{code="OK",method="DetectFaces"\} (\S+)$', re.M)


def answered(metrics_port: int) -> int:
    """DetectFaces calls this replica answered OK, from its own /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = OK_COUNT.search(text)
    return int(float(found.group(1))) if found else 0


class Load:
    """CALLERS threads sending zidane.jpg through one client until stopped."""

    def __init__(self, client: FaceDetectorClient, image: bytes) -> None:
        self.client, self.image = client, image
        self.statuses: Counter[str] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CALLERS)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                detection = self.client.detect(self.image)
                outcome = "OK" if detection.faces else "no faces"
            except Exception as exc:  # any failure is what this test is about: keep its text
                outcome = type(exc).__name__
                with self._lock:
                    self.errors.append(str(exc))
            with self._lock:
                self.statuses[outcome] += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def replica(start_server: ServerFactory, index: int, port: int | None = None) -> tuple[Server, int]:
    metrics_port = free_port()
    # One batch worker each: three replicas share this machine's cores.
    server = start_server(
        "--batch-workers", "1", "--metrics-listen", f"127.0.0.1:{metrics_port}",
        unix=False, start=False, name=f"replica{index}-{port or 'first'}",
    )  # fmt: skip
    if port is not None:
        server.port = port  # the restarted replica comes back on the address clients know
    server.start()
    return server, metrics_port


def grows(metrics_port: int, by: int) -> Callable[[], bool]:
    """Whether this replica has answered `by` more calls than it had now."""
    first = answered(metrics_port)
    return lambda: answered(metrics_port) >= first + by


def test_losing_a_replica_under_load_fails_no_call_and_it_rejoins(start_server: ServerFactory) -> None:
    replicas = [replica(start_server, i) for i in range(REPLICAS)]
    target = "ipv4:" + ",".join(server.target for server, _ in replicas)
    image = image_bytes("bus.jpg")  # 487 KB: over gRPC's default 256 KiB retry buffer
    with FaceDetectorClient(target, timeout=30) as client, Load(client, image) as load:
        for _, metrics_port in replicas:  # round_robin reaches every replica
            wait_for(grows(metrics_port, 3), 60, f"calls on replica :{metrics_port}")

        victim = replicas[1][0]
        victim.proc.kill()  # type: ignore[union-attr]  # SIGKILL: no drain, calls in flight are cut
        victim.proc.wait(10)  # type: ignore[union-attr]
        for _, metrics_port in (replicas[0], replicas[2]):  # the survivors carry the load
            wait_for(grows(metrics_port, 10), 60, f"calls on survivor :{metrics_port}")

        back, back_metrics = replica(start_server, 1, port=victim.port)
        wait_for(grows(back_metrics, 3), 60, "calls on the restarted replica")
        victim.stop()

    assert load.errors == [], f"{len(load.errors)} calls failed ({dict(load.statuses)}): {load.errors[:3]}"
    assert load.statuses["OK"] > 30, dict(load.statuses)
    assert set(load.statuses) == {"OK"}, dict(load.statuses)
    assert back.proc is not None and back.proc.poll() is None, back.log_text()
