"""Server configuration: one table of settings, each a CLI flag with a FACEDET_* environment twin.

A flag on the command line wins over the environment, which wins over the default. Settings whose
best value depends on where the model runs (the CPU or a GPU) default to 0, automatic:
`resolve_automatic` fills them in once the process knows its backend.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str  # attribute on ServerConfig; flag is --name-with-dashes, env FACEDET_NAME
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    repeatable: bool = False
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "FACEDET_" + self.name.upper()


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


@dataclass(frozen=True)
class AutomaticValues:
    """What the settings left at 0 (automatic) become, by where the model runs."""

    max_batch: int
    batch_workers: int
    max_queue: int
    gil_switch_ms: float


# The CPU values are the fixed defaults this server was tuned with on the CPU, so a CPU server
# behaves as it did before they became automatic. The GPU batching values are what the GPU runs in
# docs/benchmarks.md used: batches of 64 with three in flight gave several times the throughput
# of 8 and 1, and a queue of 1024 holds 16 such batches (those runs set 4096). 1 ms for the
# interpreter lock against Python's 5 gave 11% more unary throughput on the H200 (run AA), where
# threads hand batches to each other all the time; on the 2-core CPU machine it gained nothing
# (2% less, within that machine's spread), so the CPU keeps Python's own.
ON_CPU = AutomaticValues(max_batch=8, batch_workers=1, max_queue=256, gil_switch_ms=5.0)
ON_GPU = AutomaticValues(max_batch=64, batch_workers=3, max_queue=1024, gil_switch_ms=1.0)


def _automatic(name: str) -> str:
    """The help text's note for an automatic setting: what 0 becomes on the CPU and on a GPU."""
    return f"0 = automatic: {getattr(ON_CPU, name):g} on the CPU, {getattr(ON_GPU, name):g} on a GPU"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "model",
        None,
        "model file (.onnx, or .plan with its .json sidecar) or a registry name; "
        "default: yolov5n-0.5, fetched into the cache if missing",
    ),
    Setting(
        "listen",
        ["0.0.0.0:50051"],
        "address to serve on: HOST:PORT or unix:///path/to.sock; repeat for several (env: comma-separated)",
        repeatable=True,
    ),
    Setting(
        "backend",
        "auto",
        "model runtime; auto picks tensorrt for a .plan, torch when a CUDA GPU "
        "and torch are present, else onnxruntime",
        choices=("auto", "onnxruntime", "torch", "tensorrt"),
    ),
    Setting("input_size", 640, "network input size: the long side for models with dynamic shapes", int),
    Setting("max_batch", 0, f"most images in one model run; {_automatic('max_batch')}", int),
    Setting("max_delay_ms", 2.0, "longest wait for a batch to fill before it runs", float),
    Setting(
        "max_queue",
        0,
        "requests waiting for a batch before new ones get RESOURCE_EXHAUSTED; " + _automatic("max_queue"),
        int,
    ),
    Setting(
        "batch_workers",
        0,
        "batches in flight at once (2 or more overlap host work with GPU work); "
        + _automatic("batch_workers"),
        int,
    ),
    Setting("decode_threads", 0, "threads decoding and letterboxing images (0 = number of CPUs)", int),
    Setting("intra_op_threads", 0, "ONNX Runtime threads inside one operator (0 = its default)", int),
    Setting("inter_op_threads", 1, "ONNX Runtime threads across operators", int),
    Setting("stream_window", 16, "frames of one stream processed at once (pipelining depth)", int),
    Setting(
        "max_message_bytes", 16 * 1024 * 1024, "largest request message; larger gets RESOURCE_EXHAUSTED", int
    ),
    Setting("max_pixels", 50_000_000, "largest image (width*height), checked before decoding", int),
    Setting("max_faces", 1000, "most faces per image a request may ask for", int),
    Setting("min_confidence", 0.5, "default confidence threshold for requests that leave it at 0", float),
    Setting("iou_threshold", 0.5, "default NMS IoU threshold for requests that leave it at 0", float),
    Setting("grace_seconds", 10.0, "on SIGTERM, how long in-flight calls may finish before being cut", float),
    Setting(
        "log_format",
        "auto",
        "log format: json, console, or auto (console on a TTY, else json)",
        choices=("auto", "json", "console"),
    ),
    Setting("log_level", "info", "log level", choices=("debug", "info", "warning", "error")),
    Setting("summary_interval", 60.0, "seconds between summary log lines (0 = off)", float),
    Setting(
        "memory_trim_interval",
        10.0,
        "seconds between handing freed heap memory back to the OS (glibc malloc_trim), so RSS "
        "follows the frames in flight instead of staying at the largest burst's (0 = off)",
        float,
    ),
    Setting(
        "processes",
        1,
        "gRPC server processes sharing the TCP ports (SO_REUSEPORT), for when one Python "
        "process cannot keep a GPU busy; they feed the engine process (--engines of them) or "
        "each run their own model (see --engine-process)",
        int,
    ),
    Setting(
        "front_end_listen",
        [],
        "with --processes: an address of each front end's own, beside the shared --listen ones, "
        "so clients can spread their calls over the front ends (gRPC round_robin over the list) "
        "rather than rely on SO_REUSEPORT's hash of their connections, which can leave a front "
        "end idle; {i} becomes the front end's index (unix:///run/facedet/front-end-{i}.sock), "
        "and HOST:PORT without {i} means PORT+i; repeat for several (env: comma-separated)",
        repeatable=True,
    ),
    Setting(
        "front_end_index",
        -1,
        "which front end of --processes this process is (0..N-1, for --front-end-listen); set by "
        "--processes for its children, -1 otherwise",
        int,
    ),
    Setting(
        "engine_process",
        "auto",
        "with --processes: run the model once, in a separate engine process that every gRPC "
        "front-end process feeds over a unix socket (on), or a whole pipeline in each process "
        "(off); auto = on for GPU backends (one CUDA context, batches merged across processes), "
        "off for ONNX Runtime on the CPU",
        choices=("auto", "on", "off"),
    ),
    Setting(
        "engines",
        1,
        "with an engine process: how many engine processes the front ends share (front end i "
        "uses engine i mod N); each has its own model, JPEG decoder and interpreter, and its own "
        "GPU memory",
        int,
    ),
    Setting(
        "role",
        "server",
        "server: gRPC and the model in this process; engine: only the model, serving front ends "
        "on --engine-socket (no gRPC); frontend: only gRPC, running the model in the engine at "
        "--engine-socket. --processes/--engine-process set these for their children",
        choices=("server", "engine", "frontend"),
    ),
    Setting(
        "engine_threads",
        0,
        "engine process: inference threads, each running one merged batch at a time (0 = "
        "--batch-workers); a front end's --batch-workers is then its batches in flight to the engine",
        int,
    ),
    Setting(
        "engine_max_batch",
        0,
        "engine process: most images in one merged batch across front ends (0 = --max-batch); "
        "larger than --max-batch lets the engine merge several front ends' batches into one",
        int,
    ),
    Setting(
        "gil_switch_ms",
        0.0,
        "milliseconds a Python thread may keep the interpreter lock while another waits for it "
        "(sys.setswitchinterval); 0 = automatic: 1 on a GPU, whose threads hand batches to each "
        "other all the time, and Python's own 5 on the CPU",
        float,
    ),
    Setting("engine_socket", "", "unix socket path between an engine and its front ends (--role)"),
    Setting(
        "engine_wait",
        900.0,
        "seconds a front end waits for its engine to answer at start (a first start of a "
        "compiled model takes minutes)",
        float,
    ),
    Setting(
        "engine_timeout",
        120.0,
        "seconds a front end waits for its engine to answer one batch; past it the batch fails "
        "with UNAVAILABLE (a hung engine) and the next batch reconnects",
        float,
    ),
    Setting(
        "reuse_port",
        False,
        "let other processes bind the same TCP port (SO_REUSEPORT); --processes sets it for its "
        "children. Off by default, so a server started on a taken port fails instead of silently "
        "sharing it",
        _bool,
    ),
    Setting("device", "cuda:0", "GPU for the torch and tensorrt backends"),
    Setting(
        "gpu_decode",
        "auto",
        "decode JPEGs on the GPU with nvJPEG (torch backend; what nvJPEG refuses is decoded on "
        "the CPU): auto, on, off",
        choices=("auto", "on", "off"),
    ),
    Setting(
        "compile",
        "default",
        "torch backend: compile the model with inductor under the CUDA graphs (about 2.3x the "
        "model's throughput; a first start compiles three shapes for 1-3 minutes, later starts "
        "reuse $FACEDET_HOME/inductor): default, max-autotune (longer compile), off",
        choices=("default", "max-autotune", "off"),
    ),
)


@dataclass(frozen=True)
class ServerConfig:
    model: str | None = None
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:50051"])
    backend: str = "auto"
    input_size: int = 640
    max_batch: int = 0
    max_delay_ms: float = 2.0
    max_queue: int = 0
    batch_workers: int = 0
    decode_threads: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    stream_window: int = 16
    max_message_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_faces: int = 1000
    min_confidence: float = 0.5
    iou_threshold: float = 0.5
    grace_seconds: float = 10.0
    log_format: str = "auto"
    log_level: str = "info"
    summary_interval: float = 60.0
    memory_trim_interval: float = 10.0
    processes: int = 1
    front_end_listen: list[str] = field(default_factory=list)
    front_end_index: int = -1
    engine_process: str = "auto"
    engines: int = 1
    role: str = "server"
    engine_threads: int = 0
    engine_max_batch: int = 0
    gil_switch_ms: float = 0.0
    engine_socket: str = ""
    engine_wait: float = 900.0
    engine_timeout: float = 120.0
    reuse_port: bool = False
    device: str = "cuda:0"
    gpu_decode: str = "auto"
    compile: str = "default"


assert {s.name for s in SETTINGS} == {f.name for f in fields(ServerConfig)}, (
    "SETTINGS and ServerConfig differ"
)


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    for s in SETTINGS:
        default = copy.copy(s.default)
        if s.env in env:
            default = _from_env(s, env[s.env])
        shown = ", ".join(s.default) if isinstance(s.default, list) else s.default
        help_text = f"{s.help} [env {s.env}; default {shown}]"
        if s.repeatable:
            parser.add_argument(s.flag, dest=s.name, action="append", default=None, help=help_text)
            parser.set_defaults(**{f"_{s.name}_default": default})
        else:
            parser.add_argument(
                s.flag, dest=s.name, type=s.parse, default=default, choices=s.choices, help=help_text
            )


@dataclass(frozen=True)
class _BadEnv:
    """An environment value that did not parse; reported by from_args, so a typo in one
    FACEDET_* variable breaks `facedet serve` with a clear message and no other command."""

    message: str


def _from_env(setting: Setting, raw: str) -> Any:
    if setting.repeatable:
        return [part.strip() for part in raw.split(",") if part.strip()]
    try:
        return setting.parse(raw)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        return _BadEnv(f"{setting.env}={raw!r} is not valid for {setting.flag}: {exc}")


def from_args(args: argparse.Namespace) -> ServerConfig:
    values = {}
    for s in SETTINGS:
        value = getattr(args, s.name)
        if s.repeatable and value is None:
            value = getattr(args, f"_{s.name}_default")
        if isinstance(value, _BadEnv):
            raise ValueError(f"invalid configuration: {value.message}")
        values[s.name] = value
    config = ServerConfig(**values)
    validate(config)
    return config


def validate(config: ServerConfig) -> None:
    problems = []
    for name in (
        "stream_window",
        "max_message_bytes",
        "max_pixels",
        "max_faces",
        "input_size",
    ):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be >= 1")
    if config.input_size % 32:
        problems.append("input_size must be a multiple of 32")
    for name in ("min_confidence", "iou_threshold"):
        if not 0 < getattr(config, name) <= 1:  # also false for NaN
            problems.append(f"{name} must be in (0, 1]")
    for name in ("max_delay_ms", "grace_seconds", "summary_interval", "memory_trim_interval", "engine_wait"):
        value = getattr(config, name)
        if math.isnan(value) or value < 0:
            problems.append(f"{name} must be a number >= 0")
    for name in (
        "max_batch",
        "max_queue",
        "batch_workers",
        "decode_threads",
        "intra_op_threads",
        "inter_op_threads",
        "engine_threads",
        "engine_max_batch",
    ):
        if getattr(config, name) < 0:
            problems.append(f"{name} must be >= 0 (0 = automatic)")
    for setting in SETTINGS:
        if setting.choices and getattr(config, setting.name) not in setting.choices:
            problems.append(f"{setting.name} must be one of {', '.join(setting.choices)} ({setting.env})")
    if config.processes > 1 and any(a.startswith("unix:") for a in config.listen):
        problems.append(
            "--processes > 1 needs TCP --listen addresses only (a unix socket cannot be shared; "
            "give each front end its own with --front-end-listen unix:///path/front-end-{i}.sock)"
        )
    if not 0 <= config.gil_switch_ms <= 1000:  # also false for NaN
        problems.append("gil_switch_ms must be in [0, 1000] (0 = automatic)")
    if not config.engine_timeout > 0:  # also false for NaN
        problems.append("engine_timeout must be a number > 0")
    if config.role != "server" and not config.engine_socket:
        problems.append(f"--role {config.role} needs --engine-socket")
    if config.engines < 1:
        problems.append("engines must be >= 1")
    elif config.engines > config.processes:
        problems.append("--engines cannot exceed --processes (each engine needs a front end)")
    if config.role != "server" and config.processes > 1:
        problems.append("--processes applies to --role server (it starts the engine and front ends)")
    if not config.listen:
        problems.append("at least one --listen address is needed")
    problems += _front_end_problems(config)
    if problems:
        raise ValueError("invalid configuration: " + "; ".join(problems))


def runs_on_gpu(backend: str, device: str) -> bool:
    """Whether `backend` runs the model on a GPU: TensorRT always, torch on a CUDA device
    (`--device cpu` runs it on the CPU), ONNX Runtime never (this server runs it on the CPU,
    whatever --device says)."""
    if backend == "tensorrt":
        return True
    return backend == "torch" and device.strip().lower().startswith("cuda")


def resolve_automatic(config: ServerConfig, backend: str, device: str) -> ServerConfig:
    """`config` with every setting left at 0 (automatic) that depends on where the model runs
    filled in for `backend` on `device` (ON_CPU or ON_GPU); values given explicitly stay.
    Called once the backend is known: it decides the batch size the backend is loaded with."""
    automatic = ON_GPU if runs_on_gpu(backend, device) else ON_CPU
    filled = {
        f.name: getattr(automatic, f.name) for f in fields(AutomaticValues) if getattr(config, f.name) == 0
    }
    return replace(config, **filled)


def supervises(config: ServerConfig) -> bool:
    """Whether this `facedet serve` starts child processes (front ends, engines) and serves
    nothing itself."""
    return config.role == "server" and (config.processes > 1 or config.engine_process == "on")


def front_end_addresses(templates: Sequence[str], index: int) -> list[str]:
    """Front end `index`'s own addresses: {i} in a template becomes the index; a TCP HOST:PORT
    without it becomes HOST:PORT+index, so `--front-end-listen 127.0.0.1:50070` gives front
    ends 50070, 50071, ..."""
    addresses = []
    for template in templates:
        if "{i}" in template:
            addresses.append(template.replace("{i}", str(index)))
        else:
            host, port = _split_port(template)
            addresses.append(f"{host}:{port + index}")
    return addresses


def listen_addresses(config: ServerConfig) -> list[str]:
    """Every address this process serves on: the shared --listen ones, and its own as a front
    end of --processes."""
    if config.front_end_index < 0:
        return list(config.listen)
    return [*config.listen, *front_end_addresses(config.front_end_listen, config.front_end_index)]


def _split_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host, int(port)


def _front_end_problems(config: ServerConfig) -> list[str]:
    if config.front_end_index < -1:
        return ["front_end_index must be >= 0, or -1 for a process that is no front end of --processes"]
    if not config.front_end_listen or config.role == "engine":  # an engine serves no gRPC
        return []
    if supervises(config):
        indices = list(range(config.processes))
    elif config.front_end_index >= 0:
        indices = [config.front_end_index]
    else:
        return [
            "--front-end-listen gives each front end of --processes an address of its own; with "
            "one process, add the address to --listen"
        ]
    problems = []
    for template in config.front_end_listen:
        if "{i}" in template:
            continue
        if template.startswith("unix:"):
            problems.append(
                f"--front-end-listen {template}: a unix socket per front end needs {{i}} in its path"
            )
            continue
        try:
            _, port = _split_port(template)
        except ValueError as exc:
            problems.append(f"--front-end-listen: {exc} (nor a unix: address with {{i}})")
            continue
        if not 0 < port + min(indices) <= port + max(indices) <= 65535:
            problems.append(f"--front-end-listen {template}: port {port} + front-end index is past 65535")
    if problems:
        return problems
    shared = set(config.listen)
    for index in indices:
        clash = shared.intersection(front_end_addresses(config.front_end_listen, index))
        if clash:
            problems.append(
                f"--front-end-listen gives front end {index} {', '.join(sorted(clash))}, "
                "which --listen already has"
            )
    return problems
