"""`facedet serve --processes N` (and `--engine-process on`): start the child processes, forward
SIGTERM/SIGINT to them, restart an engine that dies, and exit when the front ends do.

With engine processes (`--engines` per device of `--devices`) the order matters: the engines
start first and stop last, so front ends draining their in-flight calls still have a model to
run them on. An engine that dies is restarted on the same socket path and device, after 1 s and
then twice as long after each further death within --engine-restart-window (at most 30 s); its
front ends meanwhile answer UNAVAILABLE and report NOT_SERVING, the other engines' front ends
are untouched. An engine that dies more than --engine-restarts times within the window is a
failure restarting cannot cure (a broken GPU, a model that no longer loads): the front ends are
stopped and the exit status is the engine's (1 where it exited 0), so an orchestrator restarts
the pod or pages someone. A front end that exits while the server is not stopping (its own
port taken, a crash) stops the server the same way: its port is published in GetModelInfo, so
running on without it would send callers to a refused address."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import structlog

from facedet_server.app.config import ServerConfig
from facedet_server.app.topology import (
    TOPOLOGY_ENV,
    EnginePlace,
    Layout,
    cuda_available,
    engine_of,
    own_addresses,
    place_engines,
)

log = structlog.get_logger("facedet.supervisor")

FIRST_RESTART_DELAY = 1.0  # seconds; doubled after each death within the window
MAX_RESTART_DELAY = 30.0


def wants_engine(config: ServerConfig, gpu_found: bool | None = None) -> tuple[bool, str]:
    """Whether --processes/--engine-process run the model in engine processes, and why.
    `gpu_found`: whether the topology found a CUDA GPU to use (None: ask torch here)."""
    if config.engine_process != "auto":
        return config.engine_process == "on", f"--engine-process {config.engine_process}"
    if config.processes <= 1:
        return False, "one process: the model runs in it"
    if config.backend in ("torch", "tensorrt"):
        return True, f"--backend {config.backend} runs on a GPU: one process, one CUDA context"
    if config.backend == "auto":
        if config.model and Path(config.model).suffix in (".plan", ".engine"):
            return True, "a TensorRT engine runs on a GPU: one process, one CUDA context"
        if cuda_available() if gpu_found is None else gpu_found:
            return True, "a CUDA GPU and torch are present: one process, one CUDA context"
    return False, "ONNX Runtime on the CPU: each process runs its own model on its own cores"


def restart_delay(deaths: int) -> float:
    """Seconds before restarting an engine that has died `deaths` times within the window."""
    return min(MAX_RESTART_DELAY, FIRST_RESTART_DELAY * 2.0 ** max(deaths - 1, 0))


@dataclass
class _Engine:
    place: EnginePlace
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    deaths: deque[float] = field(default_factory=deque)  # monotonic times within the window
    restart_at: float | None = None


def run(
    config: ServerConfig, argv: Sequence[str], gpus: Sequence[str] = (), errors: TextIO | None = None
) -> int:
    """`argv` is this command's own arguments; each child gets them plus its role's flags (the
    last occurrence of a flag wins). `gpus`: the CUDA devices that get engines (`topology`).
    `errors`: where a start-up error is written for a person (default sys.stderr)."""
    errors = errors or sys.stderr
    use_engine, reason = wants_engine(config, bool(gpus))
    if config.engines > 1 and not use_engine:
        print(
            f"facedet serve: --engines {config.engines} needs engine processes, and there are none: {reason}",
            file=errors,
        )
        return 2
    if len(gpus) > 1 and not use_engine:
        print(
            f"facedet serve: {len(gpus)} GPUs need engine processes, and there are none: {reason}",
            file=errors,
        )
        return 2
    base = [sys.executable, "-m", "facedet.cli", *argv, "--processes", "1", "--engines", "1"]
    # Each front end's own addresses, as resolved (automatic ones included): through the
    # environment, so a --front-end-listen on the command line, which the children also get,
    # still wins, and is not given twice.
    extra_env: dict[str, str] = {"FACEDET_FRONT_END_LISTEN": ",".join(config.front_end_listen)}
    exporter, metrics_dir = None, None
    if config.metrics_listen:
        # The children record into one folder and this process serves it: one scrape, every process.
        from facedet_server.app import metrics

        metrics_dir = tempfile.mkdtemp(prefix="facedet-metrics-")
        extra_env[metrics.MULTIPROCESS_ENV] = metrics_dir
        try:
            registry = metrics.multiprocess_registry(metrics_dir)
            exporter = metrics.start_exporter(config.metrics_listen, registry)
        except (OSError, ValueError) as exc:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            print(f"facedet serve: cannot serve metrics on {config.metrics_listen}: {exc}", file=errors)
            return 1
        base += ["--metrics-listen", ""]
    socket_dir = Path(tempfile.mkdtemp(prefix="facedet-engine-")) if use_engine else None  # mode 0700
    engines: list[_Engine] = []
    children: list[subprocess.Popen[bytes]] = []
    stopping: list[int] = []  # the signal that stops the server, once one came

    def forward(signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            stopping.append(signum)
        for child in children:  # front ends first; the engines once they are gone
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # SIGHUP reloads certificates and the token file, which the front ends serve with.
    signal.signal(signal.SIGHUP, forward)
    try:
        shared = ["--reuse-port", "true"] if config.processes > 1 else []
        # Each front end knows its index: --front-end-listen gives it its own addresses.
        fronts = [[*shared, "--front-end-index", str(i)] for i in range(config.processes)]
        front_envs = [dict(extra_env) for _ in fronts]
        if socket_dir is not None:
            places = place_engines(gpus, config.engines)
            paths = [str(socket_dir / f"{place.name}.sock") for place in places]
            device_of = [place.device or _configured_device(config) for place in places]
            layout = Layout(
                [own_addresses(config.front_end_listen, i) for i in range(config.processes)],
                [(p.name, d, s) for p, d, s in zip(places, device_of, paths, strict=True)],
            )
            log.info(
                "engine_process",
                reason=reason,
                sockets=paths,
                devices=device_of,
                front_ends=config.processes,
                front_end_addresses=layout.published_addresses,
            )
            for place, path in zip(places, paths, strict=True):
                # Its own session: a Ctrl-C on the terminal reaches the front ends, not the
                # engine they still need while they drain.
                engine_argv = [*base, "--role", "engine", "--engine-socket", path]
                if place.device:
                    engine_argv += ["--device", place.device]
                engine = _Engine(place, engine_argv)
                _start_engine(engine, extra_env)
                engines.append(engine)
            for i, front in enumerate(fronts):
                k = engine_of(i, len(places))
                front += ["--role", "frontend", "--engine-socket", paths[k]]
                front_envs[i][TOPOLOGY_ENV] = layout.to_env(k)
        else:
            log.info("processes", reason=reason, count=config.processes)
        children.extend(
            _spawn([*base, *front], str(i), env)
            for i, (front, env) in enumerate(zip(fronts, front_envs, strict=True))
        )
        engine_code = _supervise(children, engines, config, extra_env, stopping)
        codes = [child.wait() for child in children]
        for engine in engines:
            if engine.proc is not None and engine.proc.poll() is None:
                engine.proc.send_signal(signal.SIGTERM)
        for engine in engines:
            if engine.proc is not None:
                engine_code = engine_code or engine.proc.wait()  # an engine that exited first failed
        return max([*codes, engine_code or 0], key=abs)
    finally:
        for proc in [*children, *(e.proc for e in engines if e.proc is not None)]:
            if proc.poll() is None:
                proc.kill()
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)
        if exporter is not None:
            exporter.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _configured_device(config: ServerConfig) -> str:
    """Where an engine with no GPU of its own runs, as GetModelInfo names it."""
    return config.device if config.backend in ("torch", "tensorrt") else "cpu"


def _spawn(
    argv: list[str], index: str, extra_env: dict[str, str], new_session: bool = False
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **extra_env, "FACEDET_PROCESS_INDEX": index}
    return subprocess.Popen(argv, env=env, start_new_session=new_session)


def _start_engine(engine: _Engine, extra_env: dict[str, str]) -> None:
    engine.proc = _spawn(engine.argv, engine.place.name, extra_env, new_session=True)
    engine.restart_at = None
    # Its pid, for operators and tests (kill it to see a restart); also in its engine_serving line.
    log.info(
        "engine_started", engine=engine.place.name, pid=engine.proc.pid, device=engine.place.device or None
    )


def _supervise(
    children: list[subprocess.Popen[bytes]],
    engines: list[_Engine],
    config: ServerConfig,
    extra_env: dict[str, str],
    stopping: list[int],
) -> int | None:
    """Until every front end has exited, restarting engines that die. An engine past its
    restart limit stops the front ends (all of them: the server is then broken as a whole)
    and its status is returned; so does a front end that exits while the server is not
    stopping (it could not listen, or it crashed): the server would otherwise run on with part
    of its capacity and one published address refusing calls, while its health said SERVING.
    None when the front ends exited by signal or on the way down."""
    while any(child.poll() is None for child in children):
        now = time.monotonic()
        failed = next((c for c in children if c.poll() is not None), None) if not stopping else None
        if failed is not None:
            log.error(
                "frontend_exited",
                process=children.index(failed),
                pid=failed.pid,
                code=failed.returncode,
                action="stopping the server (a front end cannot be restarted on its own)",
            )
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            return failed.returncode or 1
        for engine in engines:
            if stopping:
                break
            if engine.proc is not None and engine.proc.poll() is not None:
                code = engine.proc.returncode
                engine.deaths.append(now)
                while engine.deaths and engine.deaths[0] < now - config.engine_restart_window:
                    engine.deaths.popleft()
                pid = engine.proc.pid
                engine.proc = None
                if len(engine.deaths) > config.engine_restarts:
                    log.error(
                        "engine_exited",
                        engine=engine.place.name,
                        pid=pid,
                        code=code,
                        deaths_in_window=len(engine.deaths),
                        window_s=config.engine_restart_window,
                        action="stopping the front ends (restart limit reached)",
                    )
                    for child in children:
                        if child.poll() is None:
                            child.send_signal(signal.SIGTERM)
                    return code or 1
                delay = restart_delay(len(engine.deaths))
                log.error(
                    "engine_exited",
                    engine=engine.place.name,
                    pid=pid,
                    code=code,
                    deaths_in_window=len(engine.deaths),
                    action=f"restarting in {delay:g} s",
                )
                engine.restart_at = now + delay
            if engine.proc is None and engine.restart_at is not None and now >= engine.restart_at:
                _start_engine(engine, extra_env)
        time.sleep(0.1)
    return None
