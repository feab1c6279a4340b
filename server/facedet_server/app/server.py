"""Assembles and runs the server: model, service, gRPC ports, health, reflection, signals.

Lifecycle: health NOT_SERVING -> model loaded and warmed up -> SERVING -> (SIGTERM/SIGINT)
NOT_SERVING, stop accepting calls, let in-flight calls finish within grace_seconds, drain the
batcher, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import structlog
from facedet.v1 import face_detector_pb2 as pb
from facedet.v1 import face_detector_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facedet_server import __version__
from facedet_server.app.config import ServerConfig, listen_addresses, non_default, resolve_automatic
from facedet_server.app.http_front import HttpSetupError, http_front_end
from facedet_server.app.memory import trim_periodically
from facedet_server.app.metrics import PrometheusMetrics, for_process, start_exporter
from facedet_server.app.security import SecurityError, ServerSecurity
from facedet_server.app.topology import Layout, engine_states
from facedet_server.faces.options import Options
from facedet_server.model.files import (
    ModelFileError,
    exported_path,
    registry_entry_at,
    resolve_model,
    sha256_of,
)
from facedet_server.pipeline.base import Limits, Pipeline
from facedet_server.pipeline.host import HostPipeline
from facedet_server.runtime import choose_backend, load_backend
from facedet_server.runtime.faults import FaultControl, fault_control, with_faults
from facedet_server.serving.batcher import BatcherConfig
from facedet_server.serving.runtime_health import GuardedPipeline
from facedet_server.serving.service import DetectionService
from facedet_server.transport.grpc.health import NOT_SERVING, SERVING, HealthService
from facedet_server.transport.grpc.servicer import FaceDetectorServicer, core_receive_limit, model_info
from facedet_server.transport.http.server import HttpFrontEnd

log = structlog.get_logger("facedet.server")


class StartupError(Exception):
    """The server cannot start (e.g. an address cannot be bound); the message says why."""


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FaceDetector"].full_name


def resolve_for_model(config: ServerConfig, model_path: Path) -> ServerConfig:
    """`config` as a process running `model_path` itself uses it: --backend auto replaced by the
    backend chosen, and the automatic settings filled in for where that backend runs the model
    (ONNX Runtime on the CPU whatever --device says; torch and TensorRT on --device)."""
    backend, reason = choose_backend(config.backend, model_path)
    log.info("backend_chosen", backend=backend, reason=reason, model=str(model_path))
    return resolve_automatic(replace(config, backend=backend), backend, config.device)


def runnable_model(backend: str, model_path: Path, home: Path | None = None) -> Path:
    """The file `backend` loads for `model_path`: the file itself, except an ncnn model (.param,
    e.g. yolov5n-face) on ONNX Runtime, which runs our ONNX export of it (`converted_ncnn`).
    The torch runtime reads the .param directly."""
    if backend != "onnxruntime" or model_path.suffix != ".param":
        return model_path
    return converted_ncnn(model_path, home)


def converted_ncnn(param: Path, home: Path | None = None) -> Path:
    """Our dynamic-shape ONNX export of an ncnn model (`param` and the .bin beside it), made once
    into $FACEDET_HOME/models/exported/ under the .bin's sha256 and reused while the converter
    that made it says it is current. Converting needs torch; without it, ModelFileError says
    what to install. The converter sits above the server, so it is asked for by name."""
    entry = registry_entry_at(param)
    what = entry.name if entry is not None else param.name
    weights = param.with_suffix(".bin")
    if not weights.is_file():
        raise ModelFileError(f"{param} is an ncnn model, but its weights {weights} are missing")
    sha = sha256_of(weights)
    target = exported_path(param, sha, home)
    # Checked before it takes the cache's name: a failed check must not leave a file that a
    # later start would take for a finished conversion.
    checking = target.with_name(f"{target.stem}.{os.getpid()}.checking.onnx")  # one per process
    try:
        cache = importlib.import_module("facedet_converter.cache")
        if cache.is_current(target, sha):
            return target
        export = importlib.import_module("facedet_converter.export")  # imports torch
        from facedet_server.runtime.torch_model import load_network

        log.info("model_converting", model=what, source=str(param), path=str(target))
        started = time.perf_counter()
        model = load_network(param)
        export.export_onnx(model, checking, export.spec_for_weights(model, param))
        export.check_onnx(checking, model, ((1, 3, 640, 640), (2, 3, 384, 640)))
        checking.replace(target)
    except ImportError as exc:
        raise ModelFileError(
            f"{what} on the CPU needs a one-time conversion to ONNX, and converting needs torch "
            f"(missing: {exc.name}): pip install torch, or from the checkout pip install -e '.[convert]'; "
            "or pass --model an ONNX converted elsewhere (facedet convert --weights "
            f"{param.name} --onnx OUT.onnx)"
        ) from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(
            f"could not convert {what} ({param}) to ONNX in {target.parent}: {exc}"
        ) from None
    finally:
        checking.unlink(missing_ok=True)
    log.info("model_converted", model=what, path=str(target), seconds=round(time.perf_counter() - started, 1))
    return target


def armed_faults() -> FaultControl | None:
    """The test-only fault injection the environment arms (docs/reliability.md, Faults): None
    unless FACEDET_FAULT_INJECTION is set; StartupError where it is set wrong."""
    try:
        return fault_control(os.environ)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def build_pipeline(
    config: ServerConfig, model_path: Path, faults: FaultControl | None = None
) -> Pipeline[Any]:
    """The model and the pre/post-processing around it, in this process. `config` is one
    `resolve_for_model` returned: the backend's batch size must be known before it loads.
    A runtime that takes batches on its GPU gets the GPU pipeline; any other the host one.
    `faults`: the test-only fault injection its model runs obey (`armed_faults`)."""
    if config.backend == "auto" or config.max_batch < 1:
        raise ValueError(
            "build_pipeline needs a config from resolve_for_model (backend and batch size known)"
        )
    backend = load_backend(
        config.backend,
        runnable_model(config.backend, model_path),
        max_batch=config.max_batch,
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        device=config.device,
        compile_mode=config.compile,
    )
    backend = with_faults(backend, faults)
    limits = limits_for(config)
    device_backend = backend.device_backend()
    if device_backend is None:
        return HostPipeline(backend, limits, config.input_size)
    from facedet_server.pipeline.gpu import GpuPipeline

    gpu = GpuPipeline(device_backend, limits, config.input_size, gpu_decode=config.gpu_decode)
    log.info("gpu_pipeline", nvjpeg=gpu.jpeg is not None, **device_backend.device_settings())
    return gpu


def limits_for(config: ServerConfig) -> Limits:
    """What one request may ask for, as the pipeline checks it: `ServerConfig()` gives the
    defaults, for the benchmarks and tests that build a pipeline without a server."""
    return Limits(max_pixels=config.max_pixels, max_faces=config.max_faces)


def build_service(
    config: ServerConfig, detector: Pipeline[Any], metrics: PrometheusMetrics | None = None
) -> DetectionService[Any]:
    batcher_config = BatcherConfig(
        max_batch=config.max_batch,
        max_delay_ms=config.max_delay_ms,
        max_queue=config.max_queue,
        workers=config.batch_workers,
    )
    defaults = Options(config.min_confidence, config.iou_threshold, config.max_faces, 0.0)
    return DetectionService(
        detector, batcher_config, defaults, config.decode_threads, metrics, config.worker_nice
    )


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        # The servicer enforces --max-message-bytes itself, so that a refusal is logged and
        # counted; the core's limit, a bounded margin above it, keeps memory bounded.
        ("grpc.max_receive_message_length", core_receive_limit(config.max_message_bytes)),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Only on request: several front-end processes may share one port (--processes), but a
        # server started on a port another one holds must fail, not split its traffic.
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        # The core's backlog of calls the Python server has not yet taken in. Past the soft
        # limit it ends new calls at random (random early detection), all past the hard one;
        # gRPC's own defaults are 1,000 and 3,000, and we keep that ratio.
        ("grpc.server.max_pending_requests", config.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", 3 * config.max_pending_calls),
    ]


async def _log_summaries(service: DetectionService[Any], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        log.info(
            "summary",
            interval_s=interval,
            queue_depth=service.batcher.depth,
            **service.take_stats().summary(),
        )


async def serve(config: ServerConfig) -> None:
    health_servicer = HealthService(["", SERVICE_NAME])

    try:
        security = ServerSecurity(config)
    except SecurityError as exc:
        raise StartupError(str(exc)) from None
    server = grpc.aio.server(options=grpc_options(config), interceptors=security.interceptors())
    metrics = for_process(config.metrics_listen)
    servicer = FaceDetectorServicer(config.stream_window, metrics, config.max_streams)
    pb_grpc.add_FaceDetectorServicer_to_server(servicer, server)
    try:
        http = http_front_end(config, security, health_servicer.serving, metrics)
    except HttpSetupError as exc:
        raise StartupError(str(exc)) from None
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    # Ports normally open before the model loads, so orchestrators see NOT_SERVING rather than a
    # refused connection while a large model loads and warms up. Processes sharing a port
    # (--processes) open it only once warm: the kernel spreads connections over every process
    # bound to the port, and must not hand one to a process still loading.
    opens_early = not config.reuse_port
    if opens_early:
        await _open_ports(server, config, security, http)
    log.info("settings", version=__version__, non_default=non_default(config))

    stop = asyncio.Event()
    aborted = threading.Event()  # the same signal, for a loading thread that blocks in a wait
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        stop.set()
        aborted.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    # SIGHUP re-reads the token and certificate files; new connections get the new ones.
    def on_hangup() -> None:
        security.reload()
        if http is not None:
            http.reload()

    loop.add_signal_handler(signal.SIGHUP, on_hangup)

    def runtime_usable(usable: bool) -> None:
        # Called from an inference or reload thread when the model runtime fails for good or
        # recovers (serving.runtime_health); health follows, unless draining already.
        status = SERVING if usable else NOT_SERVING
        asyncio.run_coroutine_threadsafe(health_servicer.set_all(status), loop)

    started = time.perf_counter()
    try:
        # From here on `config` has its automatic settings filled in for where the model runs.
        pipeline, model_name, config = await asyncio.to_thread(
            _load_pipeline, config, aborted, runtime_usable
        )
        sys.setswitchinterval(config.gil_switch_ms / 1000)
        service = build_service(config, pipeline, metrics)
        await asyncio.to_thread(service.warm_up)
    except BaseException:
        if opens_early:  # close the ports while the event loop that serves them still runs
            await server.stop(0)
            if http is not None:
                await http.stop()
        raise
    service.start()
    info = model_info(service, config.max_message_bytes, config.max_queue)
    layout = Layout.from_env()  # set by the supervisor of --processes for its front ends
    if layout is not None:
        info.front_end_addresses.extend(layout.published_addresses)
    servicer.engines = _engines_view(pipeline, layout)
    servicer.ready(service, info)
    if http is not None:
        http.ready(service)
    if metrics is not None:
        size = f"{info.input_width}x{info.input_height}"
        metrics.model_loaded(info.name, info.backend, size, info.version)
    if stop.is_set():  # SIGTERM arrived while loading: never claim SERVING
        if not opens_early:
            await server.start()  # stop() below expects a started server
        await _shut_down(server, health_servicer, service, config.grace_seconds, http)
        return
    log.info(
        "model_loaded",
        model=model_name,
        name=info.name,
        backend=info.backend,
        provider=info.execution_provider,
        input=f"{info.input_width}x{info.input_height}",
        switch_interval_s=sys.getswitchinterval(),
        max_batch=config.max_batch,
        batch_workers=config.batch_workers,
        max_queue=config.max_queue,
        seconds=round(time.perf_counter() - started, 2),
    )
    await health_servicer.set_all(SERVING)
    _follow_engine(pipeline, health_servicer, loop, metrics, layout)
    if not opens_early:
        await _open_ports(server, config, security, http)
    log.info("serving", addresses=listen_addresses(config))

    background = []
    if config.summary_interval > 0:
        background.append(asyncio.create_task(_log_summaries(service, config.summary_interval)))
    if config.memory_trim_interval > 0:
        background.append(asyncio.create_task(trim_periodically(config.memory_trim_interval)))
    exporter = None
    if metrics is not None and config.metrics_listen:
        try:
            exporter = start_exporter(config.metrics_listen, metrics.registry)
        except (OSError, ValueError) as exc:
            await _shut_down(server, health_servicer, service, config.grace_seconds, http)
            raise StartupError(f"cannot serve metrics on {config.metrics_listen}: {exc}") from None
        log.info("metrics_listening", address=config.metrics_listen)
    await stop.wait()

    if exporter is not None:
        exporter.stop()
    for task in background:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await _shut_down(server, health_servicer, service, config.grace_seconds, http)


def _engines_view(pipeline: Pipeline[Any], layout: Layout | None) -> Callable[[], list[pb.EngineInfo]]:
    """GetModelInfo.engines: every engine of the layout and whether it serves now, or this
    process itself where it runs the model."""
    from facedet_server.engine.client import EnginePipeline

    if isinstance(pipeline, EnginePipeline):
        engine = pipeline
        if layout is None:  # a front end run by hand (--role frontend)
            return lambda: [pb.EngineInfo(name="engine", device=engine.info.device, serving=engine.serving)]
        view = layout
        return lambda: [
            pb.EngineInfo(name=name, device=device, serving=serving)
            for name, device, serving in engine_states(view, engine.serving)
        ]
    own = [pb.EngineInfo(name="server", device=pipeline.backend.device, serving=True)]
    return lambda: own


def _follow_engine(
    pipeline: Pipeline[Any],
    health_servicer: HealthService,
    loop: asyncio.AbstractEventLoop,
    metrics: PrometheusMetrics | None,
    layout: Layout | None,
) -> None:
    """A front end's health follows its engine: NOT_SERVING while the engine is down (it died
    and the supervisor restarts it), SERVING again once it answers; calls meanwhile get
    UNAVAILABLE. The engine's state is a metric too, labelled with its name and device."""
    from facedet_server.engine.client import EnginePipeline

    if not isinstance(pipeline, EnginePipeline):
        return
    name, device = "engine", pipeline.info.device
    if layout is not None and 0 <= layout.engine < len(layout.engines):
        name, device, _ = layout.engines[layout.engine]
    if metrics is not None:
        metrics.engine_state(name, device, True)

    def changed(serving: bool) -> None:
        log.warning("engine_back" if serving else "engine_down", engine=name, device=device)
        if metrics is not None:
            metrics.engine_state(name, device, serving)
        status = SERVING if serving else NOT_SERVING
        asyncio.run_coroutine_threadsafe(health_servicer.set_all(status), loop)

    pipeline.watch(changed)


def _load_pipeline(
    config: ServerConfig, aborted: threading.Event, runtime_usable: Callable[[bool], None]
) -> tuple[Pipeline[Any], str, ServerConfig]:
    """(pipeline, what it runs, `config` resolved for where the model runs): the model here, or
    the engine process's at --engine-socket (whose backend and device the engine tells). A model
    run here is rebuilt should its runtime fail (serving.runtime_health), `runtime_usable` told."""
    if config.role == "frontend":
        from facedet_server.engine.client import EnginePipeline
        from facedet_server.errors import DetectError

        try:
            engine = EnginePipeline(
                Path(config.engine_socket), config.engine_wait, aborted, config.engine_timeout
            )
        except DetectError as exc:
            raise StartupError(exc.message) from None
        log.info("engine_connected", socket=config.engine_socket, engine_pid=engine.info.pid, pid=os.getpid())
        resolved = resolve_automatic(config, engine.info.backend, engine.info.device)
        return engine, f"engine process {engine.info.pid} at {config.engine_socket}", resolved
    faults = armed_faults()  # one control for the first runtime and every rebuild of it
    model_path = resolve_model(config.model)
    resolved = resolve_for_model(config, model_path)
    pipeline = GuardedPipeline(
        build_pipeline(resolved, model_path, faults),
        lambda: build_pipeline(resolved, model_path, faults),
        runtime_usable,
    )
    return pipeline, str(model_path), resolved


async def _open_ports(
    server: grpc.aio.Server, config: ServerConfig, security: ServerSecurity, http: HttpFrontEnd | None
) -> None:
    addresses = listen_addresses(config)
    for address in addresses:
        try:
            port = security.add_port(server, address)
        except SecurityError as exc:
            raise StartupError(str(exc)) from None
        except RuntimeError as exc:  # grpcio raises "Failed to bind" rather than returning 0
            raise StartupError(f"cannot listen on {address}: {exc}") from None
        if port == 0 and not address.startswith("unix:"):
            raise StartupError(f"cannot listen on {address}")
    await server.start()
    log.info("listening", addresses=addresses)
    if http is not None:
        try:
            await http.start()
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot serve HTTP on {config.http_listen}: {exc}") from None


async def _shut_down(
    server: grpc.aio.Server,
    health_servicer: HealthService,
    service: DetectionService[Any],
    grace: float,
    http: HttpFrontEnd | None = None,
) -> None:
    log.info("draining", grace_seconds=grace)
    await health_servicer.drain()
    # Both front ends drain at once, each within `grace`, before the batcher stops.
    await asyncio.gather(server.stop(grace), *([http.stop()] if http is not None else []))
    await service.close(drain=True)
    log.info("stopped", **service.take_stats().summary())
