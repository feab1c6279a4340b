"""Prometheus metrics (`--metrics-listen`): their definitions, the recorder the servicer and the
service report through (they see only the typed protocols they declare, `CallMetrics` and
`ServiceMetrics`, so neither imports Prometheus), and the HTTP exporter.

With `--processes N` every front end writes its values to files in the folder the supervisor names
in PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode), and the supervisor alone
serves them, summed, so one scrape covers every process. The gauges say how they add up there."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from facedet_server.pipeline.base import Timing

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for the folder
# Latency buckets in seconds: sub-millisecond stages up to calls stuck behind a long queue.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Timing's stage fields, as the stage label names them.
STAGES = {
    "decode": "decode_us",
    "queue": "queue_us",
    "inference": "inference_us",
    "postprocess": "postprocess_us",
}


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 hosts in brackets) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--metrics-listen must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def cuda_memory_reader() -> Callable[[], int] | None:
    """torch.cuda.memory_allocated where this process runs torch on CUDA, else None. Asked only
    of a torch already imported: the metrics never load torch themselves."""
    torch: Any = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.memory_allocated  # type: ignore[no-any-return]


class PrometheusMetrics:
    """Every facedet_* metric, in `registry` (in multiprocess mode the values go to the folder's
    files whatever the registry; the supervisor's collector reads them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "facedet_requests",
            "Detection requests answered: one per DetectFaces call, stream frame and HTTP /predictions call",
            ["method", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "facedet_request_duration_seconds",
            "Time from a request's arrival to its answer, failures included",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "facedet_stage_duration_seconds",
            "Time per pipeline stage of each answered image, from its Timing",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "facedet_batch_size", "Images per model run", buckets=BATCH_BUCKETS, registry=registry
        )
        self.queue_depth = Gauge(
            "facedet_queue_depth",
            "Requests waiting for a batch",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.in_flight = Gauge(
            "facedet_requests_in_flight",
            "Requests (calls and stream frames) being answered",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.active_streams = Gauge(
            "facedet_active_streams",
            "Open StreamDetectFaces calls",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.frames_dropped = Counter(
            "facedet_frames_dropped",
            "Live-mode stream frames answered as dropped: a newer frame arrived before they ran",
            registry=registry,
        )
        self.model_info = Gauge(
            "facedet_model_info",
            "The model served: always 1, its description in the labels",
            ["name", "runtime", "input_size", "version"],
            multiprocess_mode="max",
            registry=registry,
        )
        self.engine_serving = Gauge(
            "facedet_engine_serving",
            "Whether an engine process can run requests (1) or is down or restarting (0), as "
            "its front ends see it; by engine and device",
            ["engine", "device"],
            multiprocess_mode="livemin",
            registry=registry,
        )
        self._gpu_memory: Gauge | None = None
        self._read_gpu_memory: Callable[[], int] | None = None
        self.registry = registry

    # CallMetrics (the servicer)
    def call_started(self) -> None:
        self.in_flight.inc()

    def call_finished(self, method: str, code: str, seconds: float) -> None:
        self.in_flight.dec()
        self.requests.labels(method, code).inc()
        self.request_seconds.labels(method).observe(seconds)

    def stream_opened(self) -> None:
        self.active_streams.inc()

    def stream_closed(self) -> None:
        self.active_streams.dec()

    def frame_dropped(self) -> None:
        self.frames_dropped.inc()

    # ServiceMetrics (the service and its batcher)
    def detected(self, timing: Timing) -> None:
        for stage, name in STAGES.items():
            self.stage_seconds.labels(stage).observe(getattr(timing, name) / 1e6)

    def queued(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def batch_started(self, size: int, depth: int) -> None:
        self.batch_size.observe(size)
        self.queue_depth.set(depth)
        if self._gpu_memory is not None and self._read_gpu_memory is not None:
            # Read per batch, not per scrape: multiprocess mode cannot call back into a process.
            self._gpu_memory.set(self._read_gpu_memory())

    # The app, once the model is loaded
    def engine_state(self, engine: str, device: str, serving: bool) -> None:
        self.engine_serving.labels(engine, device).set(1 if serving else 0)

    def model_loaded(self, name: str, runtime: str, input_size: str, version: str) -> None:
        self.model_info.labels(name, runtime, input_size, version).set(1)
        self._read_gpu_memory = cuda_memory_reader()
        if self._read_gpu_memory is not None:
            self._gpu_memory = Gauge(
                "facedet_gpu_memory_allocated_bytes",
                "GPU memory torch has allocated in this process (torch.cuda.memory_allocated)",
                multiprocess_mode="livesum",
                registry=self.registry,
            )
            self._gpu_memory.set(self._read_gpu_memory())


@dataclass
class MetricsExporter:
    """The /metrics HTTP endpoint, on its own thread."""

    server: Any
    thread: Any

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_exporter(address: str, registry: CollectorRegistry) -> MetricsExporter:
    host, port = parse_address(address)
    server, thread = start_http_server(port, host, registry=registry)
    return MetricsExporter(server, thread)


def multiprocess_registry(folder: str) -> CollectorRegistry:
    """A registry that reads (and sums) what every process wrote into `folder`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return registry


def for_process(metrics_listen: str, environ: Mapping[str, str] = os.environ) -> PrometheusMetrics | None:
    """This server process's metrics: recorded when it serves /metrics itself or when its
    supervisor does (the folder named in the environment); None when metrics are off."""
    if not metrics_listen and MULTIPROCESS_ENV not in environ:
        return None
    return PrometheusMetrics(CollectorRegistry())
