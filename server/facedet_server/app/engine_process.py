"""`facedet serve --role engine`: the model behind a unix socket, no gRPC. Runs until SIGTERM or
SIGINT, then serves its connected front ends until they hang up (at most --grace-seconds),
finishes the batches it holds and exits."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import structlog

from facedet_server.app.config import ServerConfig
from facedet_server.app.memory import start_trim_thread
from facedet_server.engine.server import EngineServer, ensure_free

log = structlog.get_logger("facedet.engine")


def run_engine(config: ServerConfig) -> None:
    from facedet_server.app.server import armed_faults, build_pipeline, resolve_for_model
    from facedet_server.model.files import resolve_model

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    started = time.perf_counter()
    ensure_free(Path(config.engine_socket))
    model_path = resolve_model(config.model)
    config = resolve_for_model(config, model_path)  # before the 0 = automatic fallbacks below
    threads = config.engine_threads or config.batch_workers
    max_batch = config.engine_max_batch or config.max_batch
    # The engine runs the model, so it is where test-only fault injection must arm (the front
    # ends never run it): FACEDET_FAULT_INJECTION reaches it through the supervisor's environment.
    faults = armed_faults()
    pipeline = build_pipeline(replace(config, max_batch=max_batch), model_path, faults)
    sys.setswitchinterval(config.gil_switch_ms / 1000)
    engine = EngineServer(pipeline, Path(config.engine_socket), threads, max_batch)
    engine.start()
    log.info(
        "engine_serving",
        socket=config.engine_socket,
        model=str(model_path),
        backend=engine.info.backend,
        threads=threads,
        switch_interval_s=sys.getswitchinterval(),
        pid=os.getpid(),
        max_batch=max_batch,
        seconds=round(time.perf_counter() - started, 2),
    )
    if config.memory_trim_interval > 0:
        start_trim_thread(config.memory_trim_interval, stop)
    interval = config.summary_interval or None
    while not stop.wait(interval):
        log.info("engine_summary", interval_s=interval, **engine.take_stats().summary())
    log.info("engine_draining", front_ends=engine.connections, grace_seconds=config.grace_seconds)
    remaining = engine.drain(config.grace_seconds)
    if remaining:
        log.warning("engine_drain_timeout", front_ends=remaining)
    engine.close()
    log.info("engine_stopped", **engine.take_stats().summary())
