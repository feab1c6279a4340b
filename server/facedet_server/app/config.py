"""Server configuration. Each setting is declared once, as a field of `ServerConfig`: its type,
default, bounds or choices, help text and group. Its flag (--name-with-dashes), its environment
twin (FACEDET_NAME), `--help`, validation and the README's table all come from that field.

A flag on the command line wins over the environment, which wins over the default. Settings whose
best value depends on where the model runs (the CPU or a GPU) default to 0, automatic:
`resolve_automatic` fills them in once the process knows its backend.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """A heading of `--help` and of the README's table."""

    title: str
    description: str


TRANSPORT = Group("transport", "where and how gRPC, and the 2021 demo's HTTP API, are served")
MODEL_AND_DEVICE = Group("model and device", "which model runs, on what runtime and device")
REQUEST_LIMITS = Group("limits", "what one request may ask for, and the defaults it gets")
BATCHING = Group("batching", "how requests are grouped into model runs")
TOPOLOGY = Group("process topology", "gRPC front-end processes and the engine processes they feed")
LOGGING = Group("logging and upkeep", "logs, summaries and memory")
SECURITY = Group("security", "TLS, client certificates, tokens and socket permissions (docs/security.md)")
GROUPS: tuple[Group, ...] = (
    TRANSPORT, SECURITY, MODEL_AND_DEVICE, REQUEST_LIMITS, BATCHING, TOPOLOGY, LOGGING
)


@dataclass(frozen=True)
class Bounds:
    """The numbers a setting accepts. NaN is never inside: every comparison with it is false."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # `low` itself is outside
    multiple_of: int | None = None
    note: str = ""  # appended to the problem, e.g. what 0 means
    text: str | None = None  # says what is accepted, in place of the generated ">= low"

    def problems(self, name: str, value: float, is_float: bool) -> list[str]:
        problems = []
        inside = self.low is None or (value > self.low if self.low_open else value >= self.low)
        if inside and self.high is not None:
            inside = value <= self.high
        if not inside:
            problems.append(f"{name} must be {self.text or self._describe(is_float)}{self.note}")
        if self.multiple_of and value % self.multiple_of:
            problems.append(f"{name} must be a multiple of {self.multiple_of}")
        return problems

    def _describe(self, is_float: bool) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        number = "a number " if is_float else ""
        return f"{number}{'>' if self.low_open else '>='} {self.low:g}"


AUTOMATIC = " (0 = automatic)"
POSITIVE = Bounds(low=1)
NOT_NEGATIVE = Bounds(low=0)
ZERO_IS_AUTOMATIC = Bounds(low=0, note=AUTOMATIC)
FRACTION = Bounds(low=0, high=1, low_open=True)  # (0, 1]


@dataclass(frozen=True)
class Declaration:
    """What a `ServerConfig` field says about itself beyond its name, type and default."""

    help: str
    group: Group
    bounds: Bounds | None = None
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None  # in place of the field type's own parser


_DECLARATION = "facedet.setting"  # the key of a Declaration in a field's metadata


def declare(
    help: str,
    group: Group,
    *,
    bounds: Bounds | None = None,
    choices: tuple[str, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
) -> dict[str, Declaration]:
    """A `ServerConfig` field's metadata: `field(default_factory=..., metadata=declare(...))`,
    for the list settings, whose default must be a fresh list for each instance."""
    return {_DECLARATION: Declaration(help, group, bounds, choices, parse)}


def setting(
    default: T,
    help: str,
    group: Group,
    *,
    bounds: Bounds | None = None,
    choices: tuple[str, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
) -> T:
    """A `ServerConfig` field with an immutable default, declared once."""
    return field(default=default, metadata=declare(help, group, bounds=bounds, choices=choices, parse=parse))


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _count_or_auto(text: str) -> int:
    """A count where `auto` means 0, automatic (`--processes auto`)."""
    return 0 if text.strip().lower() == "auto" else int(text)


def _choice(text: str) -> str:
    """A value of a setting with choices: they are all lower case, and `--log-level INFO` means
    what `--log-level info` does."""
    return text.strip().lower()


@dataclass(frozen=True)
class AutomaticValues:
    """What the settings left at 0 (automatic) become, by where the model runs."""

    max_batch: int
    batch_workers: int
    max_queue: int
    gil_switch_ms: float


def usable_cpus() -> int:
    """CPUs this process may run on (a container's cpuset, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


# On the CPU (ONNX Runtime) a batch in flight per CPU, each running its operators on one thread,
# measured best on 2 cores against one batch on all of them (docs/benchmarks.md); batches of 8
# and a queue of 256 are the values this server was first tuned with. The GPU values are what the
# GPU runs in docs/benchmarks.md used: large batches with several in flight keep a GPU busy, a
# queue of 16 such batches absorbs bursts, and a short interpreter-lock slice helps threads that
# hand batches to each other all the time; on the CPU that slice gained nothing, so the CPU keeps
# Python's own 5 ms.
ON_CPU = AutomaticValues(max_batch=8, batch_workers=usable_cpus(), max_queue=256, gil_switch_ms=5.0)
ON_GPU = AutomaticValues(max_batch=64, batch_workers=3, max_queue=1024, gil_switch_ms=1.0)
# Automatic values that follow the machine rather than a constant, as the help says them.
PER_MACHINE = {"batch_workers": "one per CPU"}


def _automatic(name: str) -> str:
    """The help text's note for an automatic setting: what 0 becomes on the CPU and on a GPU."""
    cpu = PER_MACHINE.get(name) or f"{getattr(ON_CPU, name):g}"
    return f"0 = automatic: {cpu} on the CPU, {getattr(ON_GPU, name):g} on a GPU"


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of `facedet serve`, grouped as `--help` shows them."""

    # transport
    listen: list[str] = field(
        default_factory=lambda: ["0.0.0.0:50051"],
        metadata=declare(
            "address to serve on: HOST:PORT or unix:///path/to.sock; repeat for several "
            "(env: comma-separated)",
            TRANSPORT,
        ),
    )
    max_message_bytes: int = setting(
        16 * 1024 * 1024,
        "largest request message; larger gets RESOURCE_EXHAUSTED, logged and counted, except past "
        "twice this (at most 64 MiB more), which gRPC itself cuts unread and unlogged",
        TRANSPORT,
        bounds=POSITIVE,
    )
    stream_window: int = setting(
        16,
        "frames of one stream answered at once (pipelining depth); a stream with this many "
        "responses unwritten is not read further (backpressure)",
        TRANSPORT,
        bounds=POSITIVE,
    )
    max_streams: int = setting(
        256,
        "StreamDetectFaces calls open at once, per front-end process; more get RESOURCE_EXHAUSTED "
        "at once (0 = no limit)",
        TRANSPORT,
        bounds=NOT_NEGATIVE,
    )
    max_pending_calls: int = setting(
        1000,
        "calls gRPC's core may hold for this front end before its Python server takes them in; "
        "past it the core ends new calls CANCELLED at once, unseen by facedet (some from this "
        "many, all from three times it). Higher turns those into RESOURCE_EXHAUSTED from "
        "facedet, but only after they wait in that backlog (docs/reliability.md)",
        TRANSPORT,
        bounds=POSITIVE,
    )
    grace_seconds: float = setting(
        10.0,
        "on SIGTERM, how long in-flight calls may finish before being cut",
        TRANSPORT,
        bounds=NOT_NEGATIVE,
    )
    reuse_port: bool = setting(
        False,
        "let other processes bind the same TCP port (SO_REUSEPORT); --processes sets it for its "
        "children. Off by default, so a server started on a taken port fails instead of silently "
        "sharing it",
        TRANSPORT,
    )
    http_listen: str = setting(
        "",
        "HOST:PORT to also serve the 2021 TorchServe demo's HTTP API on, through "
        "the same batcher: PUT/POST /predictions/{model} with the image as the body, GET /ping "
        "(README: from the 2021 demo); a body over --max-message-bytes gets 413; TLS and "
        "--auth-token-file apply as on gRPC; empty = off",
        TRANSPORT,
    )

    # security
    tls_cert: str = setting(
        "",
        "PEM certificate chain: serve TLS on every TCP address (unix sockets stay plaintext, "
        "guarded by their file mode); re-read on SIGHUP",
        SECURITY,
    )
    tls_key: str = setting("", "PEM private key of --tls-cert; re-read on SIGHUP", SECURITY)
    tls_client_ca: str = setting(
        "",
        "PEM CA bundle: with --tls-cert, clients must present a certificate it signed (mutual "
        "TLS); re-read on SIGHUP",
        SECURITY,
    )
    auth_token_file: str = setting(
        "",
        "file holding one bearer token: every call but grpc.health.v1.Health must send "
        "`authorization: Bearer TOKEN` or gets UNAUTHENTICATED; re-read on SIGHUP",
        SECURITY,
    )
    reflection: bool = setting(True, "serve gRPC server reflection (grpcurl list/describe)", SECURITY)
    unix_socket_mode: str = setting(
        "0660",
        "octal file mode of each --listen unix socket, set right after binding (owner and group "
        "may connect; never world-writable unless asked)",
        SECURITY,
    )
    unix_socket_group: str = setting(
        "",
        "group (name or gid) given each --listen unix socket, so a client of another UID in "
        "that group can connect (default: the process's group)",
        SECURITY,
    )

    # model and device
    model: str | None = setting(
        None,
        "model file (.onnx, or .plan with its .json sidecar) or a registry name; "
        "default: yolov5n-0.5, fetched into the cache if missing",
        MODEL_AND_DEVICE,
    )
    backend: str = setting(
        "auto",
        "model runtime; auto picks tensorrt for a .plan, torch when a CUDA GPU "
        "and torch are present, else onnxruntime",
        MODEL_AND_DEVICE,
        choices=("auto", "onnxruntime", "torch", "tensorrt"),
    )
    input_size: int = setting(
        640,
        "network input size: the long side for models with dynamic shapes",
        MODEL_AND_DEVICE,
        bounds=Bounds(low=1, multiple_of=32),
    )
    device: str = setting("cuda:0", "GPU for the torch and tensorrt backends", MODEL_AND_DEVICE)
    devices: str = setting(
        "auto",
        "GPUs to run engine processes on (--engines per GPU, front ends spread over them): all "
        "(every visible GPU), indices (0,1,3), or auto: every visible GPU for a GPU backend "
        "when --device is left at cuda:0, else --device alone",
        MODEL_AND_DEVICE,
    )
    gpu_decode: str = setting(
        "auto",
        "decode JPEGs on the GPU with nvJPEG (torch backend; what nvJPEG refuses is decoded on "
        "the CPU): auto, on, off",
        MODEL_AND_DEVICE,
        choices=("auto", "on", "off"),
    )
    compile: str = setting(
        "default",
        "torch backend: compile the model with inductor under the CUDA graphs (a first start "
        "compiles three shapes, which takes minutes; later starts reuse $FACEDET_HOME/inductor): "
        "default, max-autotune (longer compile), off",
        MODEL_AND_DEVICE,
        choices=("default", "max-autotune", "off"),
    )
    intra_op_threads: int = setting(
        0,
        "ONNX Runtime threads inside one operator; 0 = automatic: the CPUs shared among the "
        "batch workers (1 each with the automatic --batch-workers)",
        MODEL_AND_DEVICE,
        bounds=ZERO_IS_AUTOMATIC,
    )
    inter_op_threads: int = setting(
        1, "ONNX Runtime threads across operators", MODEL_AND_DEVICE, bounds=ZERO_IS_AUTOMATIC
    )

    # limits and request defaults
    max_pixels: int = setting(
        50_000_000, "largest image (width*height), checked before decoding", REQUEST_LIMITS, bounds=POSITIVE
    )
    max_faces: int = setting(
        1000, "most faces per image a request may ask for", REQUEST_LIMITS, bounds=POSITIVE
    )
    min_confidence: float = setting(
        0.5, "default confidence threshold for requests that leave it at 0", REQUEST_LIMITS, bounds=FRACTION
    )
    iou_threshold: float = setting(
        0.5, "default NMS IoU threshold for requests that leave it at 0", REQUEST_LIMITS, bounds=FRACTION
    )

    # batching
    max_batch: int = setting(
        0, f"most images in one model run; {_automatic('max_batch')}", BATCHING, bounds=ZERO_IS_AUTOMATIC
    )
    max_delay_ms: float = setting(
        2.0, "longest wait for a batch to fill before it runs", BATCHING, bounds=NOT_NEGATIVE
    )
    max_queue: int = setting(
        0,
        "requests waiting for a batch before new ones get RESOURCE_EXHAUSTED; " + _automatic("max_queue"),
        BATCHING,
        bounds=ZERO_IS_AUTOMATIC,
    )
    batch_workers: int = setting(
        0,
        "batches in flight at once (2 or more overlap host work with GPU work); "
        + _automatic("batch_workers"),
        BATCHING,
        bounds=ZERO_IS_AUTOMATIC,
    )
    decode_threads: int = setting(
        0,
        "threads decoding and letterboxing images (0 = number of CPUs)",
        BATCHING,
        bounds=ZERO_IS_AUTOMATIC,
    )
    worker_nice: int = setting(
        5,
        "niceness added to the decode and inference threads, so that under overload the event "
        "loop (health checks, refusals) gets the CPU before them; 0 = none",
        BATCHING,
        bounds=Bounds(low=0, high=19),
    )
    gil_switch_ms: float = setting(
        0.0,
        "milliseconds a Python thread may keep the interpreter lock while another waits for it "
        "(sys.setswitchinterval); a short one suits a GPU, whose threads hand batches to each "
        "other all the time; " + _automatic("gil_switch_ms"),
        BATCHING,
        bounds=Bounds(low=0, high=1000, note=AUTOMATIC),
    )

    # process topology
    processes: int = setting(
        0,
        "gRPC front-end processes sharing the TCP ports (SO_REUSEPORT), for when one Python "
        "process cannot keep a GPU busy; they feed the engine processes or each run their own "
        "model (see --engine-process). 0 or auto = automatic: 1 on the CPU; on GPUs min(4 per "
        "GPU, usable CPUs / 4), at least one per engine (docs/operations.md)",
        TOPOLOGY,
        bounds=ZERO_IS_AUTOMATIC,
        parse=_count_or_auto,
    )
    front_end_listen: list[str] = field(
        default_factory=list,
        metadata=declare(
            "with --processes: an address of each front end's own, beside the shared --listen ones, "
            "so clients can spread their calls over the front ends (gRPC round_robin over the list) "
            "rather than rely on SO_REUSEPORT's hash of their connections, which can leave a front "
            "end idle; {i} becomes the front end's index (unix:///run/facedet/front-end-{i}.sock), "
            "and HOST:PORT without {i} means PORT+i; repeat for several (env: comma-separated). "
            "Left empty with several front ends: the first TCP --listen address's port + 1 + i "
            "(50052, 50053, ... for the default --listen); `none` gives them no address of their own",
            TOPOLOGY,
        ),
    )
    front_end_index: int = setting(
        -1,
        "which front end of --processes this process is (0..N-1, for --front-end-listen); set by "
        "--processes for its children, -1 otherwise",
        TOPOLOGY,
        bounds=Bounds(low=-1, text=">= 0, or -1 for a process that is no front end of --processes"),
    )
    engine_process: str = setting(
        "auto",
        "with --processes: run the model once, in a separate engine process that every gRPC "
        "front-end process feeds over a unix socket (on), or a whole pipeline in each process "
        "(off); auto = on for GPU backends (one CUDA context, batches merged across processes), "
        "off for ONNX Runtime on the CPU",
        TOPOLOGY,
        choices=("auto", "on", "off"),
    )
    engines: int = setting(
        1,
        "with an engine process: engine processes per device of --devices (front end i uses "
        "engine i mod the total); each has its own model, JPEG decoder and interpreter, and "
        "its own GPU memory",
        TOPOLOGY,
        bounds=POSITIVE,
    )
    role: str = setting(
        "server",
        "server: gRPC and the model in this process; engine: only the model, serving front ends "
        "on --engine-socket (no gRPC); frontend: only gRPC, running the model in the engine at "
        "--engine-socket. --processes/--engine-process set these for their children",
        TOPOLOGY,
        choices=("server", "engine", "frontend"),
    )
    engine_socket: str = setting(
        "", "unix socket path between an engine and its front ends (--role)", TOPOLOGY
    )
    engine_threads: int = setting(
        0,
        "engine process: inference threads, each running one merged batch at a time (0 = "
        "--batch-workers); a front end's --batch-workers is then its batches in flight to the engine",
        TOPOLOGY,
        bounds=ZERO_IS_AUTOMATIC,
    )
    engine_max_batch: int = setting(
        0,
        "engine process: most images in one merged batch across front ends (0 = --max-batch); "
        "larger than --max-batch lets the engine merge several front ends' batches into one",
        TOPOLOGY,
        bounds=ZERO_IS_AUTOMATIC,
    )
    engine_restarts: int = setting(
        5,
        "restarts of one engine process within --engine-restart-window seconds; an engine that "
        "dies more often than that stops the server (front ends drained, exit status 1). "
        "Front ends answer UNAVAILABLE while their engine is down (0 = never restart)",
        TOPOLOGY,
        bounds=NOT_NEGATIVE,
    )
    engine_restart_window: float = setting(
        300.0,
        "seconds over which --engine-restarts are counted; restarts wait 1 s, then twice as "
        "long after each death in the window (at most 30 s)",
        TOPOLOGY,
        bounds=Bounds(low=0, low_open=True),
    )
    engine_wait: float = setting(
        900.0,
        "seconds a front end waits for its engine to answer at start (a first start of a "
        "compiled model takes minutes)",
        TOPOLOGY,
        bounds=NOT_NEGATIVE,
    )
    engine_timeout: float = setting(
        120.0,
        "seconds a front end waits for its engine to answer one batch; past it the batch fails "
        "with UNAVAILABLE (a hung engine) and the next batch reconnects",
        TOPOLOGY,
        bounds=Bounds(low=0, low_open=True),
    )

    # logging and upkeep
    log_format: str = setting(
        "auto",
        "log format: json, console, or auto (console on a TTY, else json)",
        LOGGING,
        choices=("auto", "json", "console"),
    )
    log_level: str = setting("info", "log level", LOGGING, choices=("debug", "info", "warning", "error"))
    summary_interval: float = setting(
        60.0, "seconds between summary log lines (0 = off)", LOGGING, bounds=NOT_NEGATIVE
    )
    memory_trim_interval: float = setting(
        10.0,
        "seconds between handing freed heap memory back to the OS (glibc malloc_trim), so RSS "
        "follows the frames in flight instead of staying at the largest burst's (0 = off)",
        LOGGING,
        bounds=NOT_NEGATIVE,
    )
    metrics_listen: str = setting(
        "",
        "HOST:PORT to serve Prometheus metrics on (/metrics, plain HTTP; with --processes the "
        "supervisor serves every process's, summed); empty = off",
        LOGGING,
    )


@dataclass(frozen=True)
class Setting:
    """One field of ServerConfig as the command line, the environment and the docs see it."""

    name: str  # attribute on ServerConfig; flag --name-with-dashes, env FACEDET_NAME
    default: Any
    help: str
    group: Group
    parse: Callable[[str], Any] = str  # one flag or environment value -> the field's type
    repeatable: bool = False  # a list: the flag repeats, the environment value is comma-separated
    choices: tuple[str, ...] | None = None
    bounds: Bounds | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def negated_flag(self) -> str:
        """--no-name, which turns a boolean setting off."""
        return "--no-" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "FACEDET_" + self.name.upper()

    def problems(self, value: Any) -> list[str]:
        if self.choices and value not in self.choices:  # argparse checks flags, not defaults
            return [f"{self.name} must be one of {', '.join(self.choices)} ({self.env})"]
        if self.bounds is None:
            return []
        return self.bounds.problems(self.name, value, self.parse is float)


# How a field's type is read from one flag or environment value.
_PARSERS: dict[Any, Callable[[str], Any]] = {int: int, float: float, bool: _bool, str: str, str | None: str}


def _settings() -> tuple[Setting, ...]:
    types = get_type_hints(ServerConfig)
    settings = []
    for f in fields(ServerConfig):
        declared: Declaration = f.metadata[_DECLARATION]
        kind = types[f.name]
        repeatable = kind == list[str]
        if not repeatable and kind not in _PARSERS:
            raise TypeError(f"ServerConfig.{f.name}: no parser for {kind}")
        settings.append(
            Setting(
                name=f.name,
                default=f.default_factory() if callable(f.default_factory) else f.default,
                help=declared.help,
                group=declared.group,
                parse=declared.parse
                or (str if repeatable else _choice if declared.choices else _PARSERS[kind]),
                repeatable=repeatable,
                choices=declared.choices,
                bounds=declared.bounds,
            )
        )
    return tuple(settings)


SETTINGS: tuple[Setting, ...] = _settings()


def shown_default(setting: Setting) -> str:
    """The default as --help and the README show it: a list comma-separated, a boolean as its
    environment twin reads it, and "(none)" for an empty one."""
    default = setting.default
    if setting.repeatable:
        shown = ", ".join(default)
    elif isinstance(default, bool):
        shown = str(default).lower()
    else:
        shown = "" if default is None else str(default)
    return shown or "(none)"


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """Every setting as a flag of `parser`, under its group; a FACEDET_* variable in `environ`
    (os.environ when None) becomes the flag's default."""
    env = os.environ if environ is None else environ
    groups = {group: parser.add_argument_group(group.title, group.description) for group in GROUPS}
    for s in SETTINGS:
        default = copy.copy(s.default)
        if s.env in env:
            default = _from_env(s, env[s.env])
        help_text = f"{s.help} [env {s.env}; default {shown_default(s)}]"
        group = groups[s.group]
        if s.repeatable:
            group.add_argument(s.flag, dest=s.name, action="append", default=None, help=help_text)
            parser.set_defaults(**{f"_{s.name}_default": default})
        elif s.parse is _bool:
            # A switch: --name turns it on, --no-name off; --name true/false is read as the
            # environment twin is (the supervisor passes --reuse-port true to its children).
            help_text = f"{s.help} [env {s.env}; default {shown_default(s)}; {s.negated_flag} turns it off]"
            group.add_argument(
                s.flag,
                dest=s.name,
                type=_bool,
                nargs="?",
                const=True,
                default=default,
                metavar="true|false",
                help=help_text,
            )
            group.add_argument(
                s.negated_flag,
                dest=s.name,
                action="store_false",
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
        else:
            group.add_argument(
                s.flag, dest=s.name, type=s.parse, default=default, choices=s.choices, help=help_text
            )


def settings_table() -> str:
    """The README's table of settings (under "## Configuration"), one table per group."""
    parts = []
    for group in GROUPS:
        rows = [_table_row(s) for s in SETTINGS if s.group is group]
        header = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
        parts.append("\n".join([f"**{group.title.capitalize()}**: {group.description}.", "", *header, *rows]))
    return "\n\n".join(parts) + "\n"


def _table_row(s: Setting) -> str:
    default = shown_default(s)
    shown = default if default == "(none)" else f"`{default}`"
    flags = f"`{s.flag}`, `{s.negated_flag}`" if s.parse is _bool else f"`{s.flag}`"
    return f"| {flags} | `{s.env}` | {shown} | {s.help} |"


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


def non_default(config: ServerConfig) -> dict[str, Any]:
    """The settings `config` gives other values than their defaults, by name: what sets this
    server apart, for its start-up log line."""
    return {s.name: getattr(config, s.name) for s in SETTINGS if getattr(config, s.name) != s.default}


def validate(config: ServerConfig) -> None:
    """Every problem at once: each setting against its own bounds and choices, then the rules
    that tie several settings together."""
    problems = [problem for s in SETTINGS for problem in s.problems(getattr(config, s.name))]
    if config.processes > 1 and any(a.startswith("unix:") for a in config.listen):
        problems.append(
            "--processes > 1 needs TCP --listen addresses only (a unix socket cannot be shared; "
            "give each front end its own with --front-end-listen unix:///path/front-end-{i}.sock)"
        )
    if config.role != "server" and not config.engine_socket:
        problems.append(f"--role {config.role} needs --engine-socket")
    # engines < 1: its bounds say so; processes 0 (automatic) is checked once resolved.
    if config.engines >= 1 and config.engines > config.processes >= 1:
        problems.append("--engines cannot exceed --processes (each engine needs a front end)")
    if config.role != "server" and config.processes > 1:
        problems.append("--processes applies to --role server (it starts the engine and front ends)")
    if not config.listen:
        problems.append("at least one --listen address is needed")
    problems += _front_end_problems(config)
    problems += devices_problems(config.devices)
    problems += security_problems(config)
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
    filled: dict[str, Any] = {
        f.name: getattr(automatic, f.name) for f in fields(AutomaticValues) if getattr(config, f.name) == 0
    }
    resolved = replace(config, **filled)
    if resolved.intra_op_threads == 0:
        # Threads inside an operator compete with the other batches in flight for the CPUs.
        resolved = replace(resolved, intra_op_threads=max(1, usable_cpus() // resolved.batch_workers))
    return resolved


def supervises(config: ServerConfig) -> bool:
    """Whether this `facedet serve` starts child processes (front ends, engines) and serves
    nothing itself."""
    return config.role == "server" and (config.processes > 1 or config.engine_process == "on")


def devices_problems(text: str) -> list[str]:
    """What is wrong with a --devices value: auto, all, or comma-separated GPU indices."""
    if text in ("auto", "all"):
        return []
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        return [f"--devices {text!r}: expected auto, all or GPU indices such as 0,1"]
    if len(set(parts)) != len(parts):
        return [f"--devices {text!r} names a GPU twice"]
    return []


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
    if config.front_end_index < 0 or config.front_end_listen == ["none"]:
        return list(config.listen)
    return [*config.listen, *front_end_addresses(config.front_end_listen, config.front_end_index)]


def _split_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host, int(port)


def _front_end_problems(config: ServerConfig) -> list[str]:
    if config.front_end_index < -1:  # its bounds report it
        return []
    if not config.front_end_listen or config.role == "engine":  # an engine serves no gRPC
        return []
    if config.front_end_listen == ["none"]:  # no addresses of their own
        return []
    if config.processes == 0 and config.role == "server":  # automatic: checked once resolved
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


def socket_mode(text: str) -> int:
    """--unix-socket-mode as a number: octal digits, with or without 0o ("0660", "660")."""
    digits = text.strip().lower().removeprefix("0o")
    if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o777:
        raise ValueError(f"--unix-socket-mode {text!r} is not an octal file mode (e.g. 0660)")
    return int(digits, 8)


def security_problems(config: ServerConfig) -> list[str]:
    problems = []
    if bool(config.tls_cert) != bool(config.tls_key):
        problems.append("--tls-cert and --tls-key go together")
    if config.tls_client_ca and not config.tls_cert:
        problems.append("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
    try:
        socket_mode(config.unix_socket_mode)
    except ValueError as exc:
        problems.append(str(exc))
    return problems
