"""`facedet serve --processes N` (and `--engine-process on`): start the child processes, forward
SIGTERM/SIGINT to them, and exit when they do.

With engine processes (`--engines`, one by default) the order matters: the engines start first
and stop last, so front ends draining their in-flight calls still have a model to run them on;
if an engine dies, the front ends are stopped too and the exit status says so (an orchestrator
then restarts the pod, rather than keeping front ends that can only answer UNAVAILABLE)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from facedet_server.app.config import ServerConfig

log = structlog.get_logger("facedet.supervisor")


def wants_engine(config: ServerConfig) -> tuple[bool, str]:
    """Whether --processes/--engine-process run the model in one engine process, and why."""
    if config.engine_process != "auto":
        return config.engine_process == "on", f"--engine-process {config.engine_process}"
    if config.processes <= 1:
        return False, "one process: the model runs in it"
    if config.backend in ("torch", "tensorrt"):
        return True, f"--backend {config.backend} runs on a GPU: one process, one CUDA context"
    if config.backend == "auto":
        if config.model and Path(config.model).suffix in (".plan", ".engine"):
            return True, "a TensorRT engine runs on a GPU: one process, one CUDA context"
        if _cuda_available():
            return True, "a CUDA GPU and torch are present: one process, one CUDA context"
    return False, "ONNX Runtime on the CPU: each process runs its own model on its own cores"


def _cuda_available() -> bool:
    """The same test as backend selection, asked in a short-lived child: the supervisor itself
    stays a small process without torch loaded."""
    if importlib.util.find_spec("torch") is None:
        return False
    probe = [sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"]
    return subprocess.run(probe, check=False, capture_output=True).returncode == 0


def run(config: ServerConfig, argv: Sequence[str]) -> int:
    """`argv` is this command's own arguments; each child gets them plus its role's flags (the
    last occurrence of a flag wins)."""
    use_engine, reason = wants_engine(config)
    if config.engines > 1 and not use_engine:
        print(
            f"facedet serve: --engines {config.engines} needs engine processes, and there are none: {reason}",
            file=sys.stderr,
        )
        return 2
    base = [sys.executable, "-m", "facedet.cli", *argv, "--processes", "1", "--engines", "1"]
    extra_env: dict[str, str] = {}
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
            print(f"facedet serve: cannot serve metrics on {config.metrics_listen}: {exc}", file=sys.stderr)
            return 1
        base += ["--metrics-listen", ""]
    socket_dir = Path(tempfile.mkdtemp(prefix="facedet-engine-")) if use_engine else None  # mode 0700
    engines: list[subprocess.Popen[bytes]] = []
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
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
        if socket_dir is not None:
            names = [_engine_name(k, config.engines) for k in range(config.engines)]
            paths = [str(socket_dir / f"{name}.sock") for name in names]
            log.info("engine_process", reason=reason, sockets=paths, front_ends=config.processes)
            for name, path in zip(names, paths, strict=True):
                # Its own session: a Ctrl-C on the terminal reaches the front ends, not the
                # engine they still need while they drain.
                engine_argv = [*base, "--role", "engine", "--engine-socket", path]
                engines.append(_spawn(engine_argv, name, extra_env, new_session=True))
            for i, front in enumerate(fronts):
                front += ["--role", "frontend", "--engine-socket", paths[i % len(paths)]]
        else:
            log.info("processes", reason=reason, count=config.processes)
        children.extend(_spawn([*base, *front], str(i), extra_env) for i, front in enumerate(fronts))
        engine_code = _wait(children, engines)
        codes = [child.wait() for child in children]
        for engine in engines:
            if engine.poll() is None:
                engine.send_signal(signal.SIGTERM)
        for engine in engines:
            engine_code = engine_code or engine.wait()  # an engine that exited first failed
        return max([*codes, engine_code or 0], key=abs)
    finally:
        for child in [*children, *engines]:
            if child.poll() is None:
                child.kill()
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)
        if exporter is not None:
            exporter.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _spawn(
    argv: list[str], index: str, extra_env: dict[str, str], new_session: bool = False
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **extra_env, "FACEDET_PROCESS_INDEX": index}
    return subprocess.Popen(argv, env=env, start_new_session=new_session)


def _engine_name(k: int, count: int) -> str:
    """The process label (and socket name) of engine k: "engine" when there is one."""
    return "engine" if count == 1 else f"engine-{k}"


def _wait(children: list[subprocess.Popen[bytes]], engines: list[subprocess.Popen[bytes]]) -> int | None:
    """Until every front end has exited; if an engine exits first, stop the front ends (those
    of the other engines too: the set is restarted as a whole) and return its status."""
    while any(child.poll() is None for child in children):
        dead = next((engine for engine in engines if engine.poll() is not None), None)
        if dead is not None:
            log.error("engine_exited", code=dead.returncode, action="stopping the front ends")
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            return dead.returncode or 1
        time.sleep(0.1)
    return None
