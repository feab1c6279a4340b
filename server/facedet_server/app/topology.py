"""Where the processes of one `facedet serve` go: how many gRPC front ends, which engine on which
GPU, and which addresses each front end serves on its own. Pure functions, except
`resolve_for_host`, which asks the machine (its CPUs, and its GPUs in a short-lived child).

The automatic front-end count comes from the H200 runs of 2026-12-01 (16 CPUs, one GPU, torch
backend, zidane.jpg): one front end served 1,328 img/s unary at concurrency 256 and 2,869 img/s
on 128 streams; four front ends (`--processes 4`, clients round_robin over their own ports)
served 4,696 and 5,315 img/s. One front end is bound by its single Python interpreter (about
1,300 img/s of gRPC, protobuf and batching), and four of them reach what the engine's GPU does on
streams, so a GPU wants about four. Each front end keeps close to four CPUs busy there (its event
loop, gRPC's threads, decoding what nvJPEG refuses) with the engine's threads beside them:
16 CPUs fed four. Hence min(4 per GPU, usable CPUs // 4), and never fewer than the engines (each
engine needs a front end to feed it). On the CPU, ONNX Runtime already spreads one process's
batches over every core, so the CPU keeps one process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from facedet_server.app.config import ServerConfig, front_end_addresses, runs_on_gpu, usable_cpus, validate

FRONT_ENDS_PER_GPU = 4
CPUS_PER_FRONT_END = 4
# The environment variable through which the supervisor tells each front end the whole layout
# (for GetModelInfo); not a setting: only the supervisor sets it.
TOPOLOGY_ENV = "FACEDET_TOPOLOGY"
NO_OWN_ADDRESSES = "none"  # --front-end-listen none


def gpus_for_engines(devices: str, device: str, visible: int, front_ends: int, per_device: int) -> list[str]:
    """The CUDA devices that get engines: `devices` as --devices says, on a machine showing
    `visible` GPUs. auto: every visible GPU while --device is left at cuda:0 (else --device
    alone), but no more than `front_ends` (an explicit --processes; 0 = automatic) can feed at
    `per_device` engines each."""
    if visible < 1:
        return []
    if devices == "all":
        return [f"cuda:{i}" for i in range(visible)]
    if devices == "auto":
        if device.strip().lower() != "cuda:0":
            return [device]
        count = visible if front_ends == 0 else max(1, min(visible, front_ends // per_device))
        return [f"cuda:{i}" for i in range(count)]
    indices = [int(part) for part in devices.split(",")]
    missing = [i for i in indices if i >= visible]
    if missing:
        raise ValueError(
            f"--devices {devices}: GPU {', '.join(map(str, missing))} is not visible ({visible} visible: "
            "indices count within CUDA_VISIBLE_DEVICES)"
        )
    return [f"cuda:{i}" for i in indices]


def automatic_front_ends(gpus: int, cpus: int, engines: int) -> int:
    """--processes auto: see the module's docstring for the figures behind the rule."""
    if gpus < 1:
        return max(1, engines)
    return max(engines, 1, min(FRONT_ENDS_PER_GPU * gpus, cpus // CPUS_PER_FRONT_END))


def automatic_front_end_listen(listen: Sequence[str]) -> list[str]:
    """Each front end's own address when none is given: the first TCP --listen address's port
    + 1 + index, on its host (0.0.0.0:50051 -> 0.0.0.0:50052, 50053, ...). Predictable, so a
    firewall or a Service can name the ports; a port already taken fails that front end's start
    with "cannot listen on ...", and --front-end-listen chooses others."""
    for address in listen:
        if address.startswith("unix:"):
            continue
        host, _, port = address.rpartition(":")
        if host and port.isdigit():
            return [f"{host}:{int(port) + 1}"]
    return []


def resolve(
    config: ServerConfig, on_gpu: bool, visible_gpus: int, cpus: int
) -> tuple[ServerConfig, list[str]]:
    """(`config` with --processes and --front-end-listen filled in, the GPUs that get engines).
    The GPUs are empty when the model does not run on a GPU: engines then run where --device
    says, as before. Raises ValueError for a configuration that cannot be laid out."""
    gpus = (
        gpus_for_engines(config.devices, config.device, visible_gpus, config.processes, config.engines)
        if on_gpu
        else []
    )
    processes = config.processes
    engines = config.engines * max(1, len(gpus))
    if processes == 0 and any(address.startswith("unix:") for address in config.listen):
        processes = engines  # a unix --listen socket cannot be shared by several processes
    elif processes == 0:
        processes = automatic_front_ends(len(gpus), cpus, engines)
    listen = list(config.front_end_listen)
    if processes > 1 and not listen:
        listen = automatic_front_end_listen(config.listen)
    resolved = replace(config, processes=processes, front_end_listen=listen)
    if len(gpus) > 1 and config.engines * len(gpus) > processes:
        raise ValueError(
            f"invalid configuration: {len(gpus)} GPUs x --engines {config.engines} need at least "
            f"{config.engines * len(gpus)} front ends (--processes {processes})"
        )
    validate(resolved)
    return resolved, gpus


def gpu_backend(config: ServerConfig) -> bool:
    """Whether the model will run on a GPU, as backend selection decides it (asking torch in a
    short-lived child for --backend auto, so this process stays small and CUDA-free)."""
    if config.backend == "onnxruntime":
        return False
    if config.backend in ("torch", "tensorrt"):
        return runs_on_gpu(config.backend, config.device)
    if config.model and Path(config.model).suffix in (".plan", ".engine"):
        return True
    return cuda_available()


def cuda_available() -> bool:
    return visible_gpus() > 0


def visible_gpus() -> int:
    """torch.cuda.device_count() in a short-lived child (CUDA_VISIBLE_DEVICES respected); 0
    at once where there is no NVIDIA device node or no torch, so a CPU machine pays nothing."""
    if not any(Path("/dev").glob("nvidia[0-9]*")) or importlib.util.find_spec("torch") is None:
        return 0
    probe = [
        sys.executable,
        "-c",
        "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)",
    ]
    result = subprocess.run(probe, check=False, capture_output=True, text=True)
    try:
        return int(result.stdout.strip() or 0) if result.returncode == 0 else 0
    except ValueError:
        return 0


def resolve_for_host(config: ServerConfig) -> tuple[ServerConfig, list[str]]:
    """`resolve` for this machine. Asks for GPUs only where the answer matters: an automatic
    --processes, or engine processes that --devices may spread over GPUs."""
    supervising = config.processes != 1 or config.engine_process == "on"
    on_gpu = supervising and gpu_backend(config)
    return resolve(config, on_gpu, visible_gpus() if on_gpu else 0, usable_cpus())


@dataclass(frozen=True)
class EnginePlace:
    name: str  # its process label, log `process` field and socket name: "engine" or "engine-k"
    device: str  # its CUDA device, "" where it runs on --device as configured (the CPU)


def place_engines(gpus: Sequence[str], per_device: int) -> list[EnginePlace]:
    """`per_device` engines on each GPU (or `per_device` on --device when `gpus` is empty),
    numbered GPU by GPU: engine-0, engine-1 on cuda:0, engine-2, engine-3 on cuda:1, ..."""
    devices = list(gpus) or [""]
    count = len(devices) * per_device
    return [
        EnginePlace("engine" if count == 1 else f"engine-{k}", devices[k // per_device]) for k in range(count)
    ]


def engine_of(front_end: int, engines: int) -> int:
    """Front end i feeds engine i mod N: consecutive front ends land on different engines, so
    every GPU gets front ends before any gets a second one."""
    return front_end % engines


def own_addresses(templates: Sequence[str], index: int) -> list[str]:
    """Front end `index`'s own addresses (none for `--front-end-listen none`)."""
    if list(templates) == [NO_OWN_ADDRESSES]:  # --front-end-listen none
        return []
    return front_end_addresses(templates, index)


@dataclass(frozen=True)
class Layout:
    """What the supervisor tells every front end: every front end's own addresses (for
    GetModelInfo.front_end_addresses), every engine, and which one this front end feeds."""

    front_ends: list[list[str]]
    engines: list[tuple[str, str, str]]  # (name, device, socket path)
    engine: int = -1  # this front end's engine

    def to_env(self, engine: int) -> str:
        return json.dumps({"front_ends": self.front_ends, "engines": self.engines, "engine": engine})

    @staticmethod
    def from_env(environ: Mapping[str, str] = os.environ) -> Layout | None:
        raw = environ.get(TOPOLOGY_ENV)
        if not raw:
            return None
        data = json.loads(raw)
        return Layout(
            [list(a) for a in data["front_ends"]],
            [(str(n), str(d), str(s)) for n, d, s in data["engines"]],
            int(data["engine"]),
        )

    @property
    def published_addresses(self) -> list[str]:
        return [address for addresses in self.front_ends for address in addresses]


def engine_answers(socket_path: str, timeout: float = 0.2) -> bool:
    """Whether an engine listens at `socket_path` now (one that died leaves its file behind,
    refusing connections; one restarting has not opened it yet)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(socket_path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def engine_states(layout: Layout, own_serving: bool) -> list[tuple[str, str, bool]]:
    """(name, device, serving) of every engine: this front end's own as its watch says, the
    others asked at their sockets."""
    return [
        (name, device, own_serving if k == layout.engine else engine_answers(path))
        for k, (name, device, path) in enumerate(layout.engines)
    ]
