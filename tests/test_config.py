"""Server configuration: flag > FACEDET_* environment > default, validation, and the help text."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
from facedet_server.app.config import (
    GROUPS,
    SETTINGS,
    ServerConfig,
    Setting,
    add_arguments,
    from_args,
    front_end_addresses,
    listen_addresses,
    non_default,
    resolve_automatic,
    runs_on_gpu,
    settings_table,
    shown_default,
    usable_cpus,
    validate,
)


def parse(argv: list[str], environ: dict[str, str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(prog="facedet serve")
    add_arguments(parser, {} if environ is None else environ)
    return from_args(parser.parse_args(argv))


def test_no_flags_no_environment_gives_the_dataclass_defaults() -> None:
    assert parse([]) == ServerConfig()
    # The table and the dataclass agree on every default.
    assert {s.name: s.default for s in SETTINGS} == dataclasses.asdict(ServerConfig())


def test_setting_names() -> None:
    by_name = {s.name: s for s in SETTINGS}
    assert by_name["max_batch"].flag == "--max-batch"
    assert by_name["max_batch"].env == "FACEDET_MAX_BATCH"
    assert by_name["max_delay_ms"].env == "FACEDET_MAX_DELAY_MS"
    assert len(by_name) == len(SETTINGS)  # no duplicates


def test_environment_becomes_the_default() -> None:
    environ = {
        "FACEDET_MAX_BATCH": "3",
        "FACEDET_MAX_DELAY_MS": "7.5",
        "FACEDET_MAX_QUEUE": "12",
        "FACEDET_BACKEND": "onnxruntime",
        "FACEDET_MODEL": "/models/x.onnx",
        "FACEDET_MIN_CONFIDENCE": "0.25",
        "FACEDET_LOG_LEVEL": "debug",
        "FACEDET_UNRELATED": "ignored",
        "MAX_BATCH": "99",
    }
    config = parse([], environ)
    assert config.max_batch == 3 and isinstance(config.max_batch, int)
    assert config.max_delay_ms == 7.5 and isinstance(config.max_delay_ms, float)
    assert config.max_queue == 12
    assert config.backend == "onnxruntime"
    assert config.model == "/models/x.onnx"
    assert config.min_confidence == 0.25
    assert config.log_level == "debug"
    assert config.max_faces == 1000  # untouched settings keep their defaults


def test_flag_beats_environment() -> None:
    environ = {"FACEDET_MAX_BATCH": "3", "FACEDET_BACKEND": "torch", "FACEDET_LISTEN": "a:1,b:2"}
    config = parse(["--max-batch", "5", "--backend", "onnxruntime", "--listen", "c:3"], environ)
    assert config.max_batch == 5
    assert config.backend == "onnxruntime"
    assert config.listen == ["c:3"]


def test_os_environ_is_read_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEDET_MAX_QUEUE", "77")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args([])).max_queue == 77
    # An explicit mapping replaces os.environ entirely.
    assert parse([], {}).max_queue == 0  # automatic


def test_listen_is_repeatable() -> None:
    assert parse([]).listen == ["0.0.0.0:50051"]
    config = parse(["--listen", "127.0.0.1:1", "--listen", "unix:///tmp/f.sock"])
    assert config.listen == ["127.0.0.1:1", "unix:///tmp/f.sock"]


def test_listen_from_environment_is_comma_separated() -> None:
    config = parse([], {"FACEDET_LISTEN": " 127.0.0.1:1 , unix:///tmp/f.sock,,"})
    assert config.listen == ["127.0.0.1:1", "unix:///tmp/f.sock"]
    assert parse([], {"FACEDET_LISTEN": "[::]:50051"}).listen == ["[::]:50051"]


def test_listen_default_list_is_not_shared_between_parses() -> None:
    setting = next(s for s in SETTINGS if s.name == "listen")
    saved = list(setting.default)
    try:
        first = parse([])
        first.listen.append("mutated:1")
        assert parse([]).listen == ["0.0.0.0:50051"]
    finally:
        setting.default[:] = saved  # never leak the change into other tests


def test_bad_flags_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--max-batch", "x"], ["--backend", "tpu"], ["--log-format", "xml"], ["--nope"]):
        with pytest.raises(SystemExit) as info:
            parse(argv)
        assert info.value.code == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--max-batch", "-1"], "max_batch must be >= 0 (0 = automatic)"),
        (["--max-queue", "-1"], "max_queue must be >= 0 (0 = automatic)"),
        (["--batch-workers", "-3"], "batch_workers must be >= 0 (0 = automatic)"),
        (["--stream-window", "0"], "stream_window must be >= 1"),
        (["--max-message-bytes", "0"], "max_message_bytes must be >= 1"),
        (["--max-pixels", "0"], "max_pixels must be >= 1"),
        (["--max-faces", "0"], "max_faces must be >= 1"),
        (["--input-size", "0"], "input_size must be >= 1"),
        (["--input-size", "650"], "input_size must be a multiple of 32"),
        (["--input-size", "656"], "input_size must be a multiple of 32"),
        (["--min-confidence", "0"], "min_confidence must be in (0, 1]"),
        (["--min-confidence", "1.5"], "min_confidence must be in (0, 1]"),
        (["--min-confidence", "nan"], "min_confidence must be in (0, 1]"),
        (["--iou-threshold", "-0.1"], "iou_threshold must be in (0, 1]"),
        (["--max-delay-ms", "-1"], "max_delay_ms must be a number >= 0"),
        (["--engine-threads", "-1"], "engine_threads must be >= 0 (0 = automatic)"),
        (["--engine-max-batch", "-2"], "engine_max_batch must be >= 0 (0 = automatic)"),
        (["--gil-switch-ms", "-1"], "gil_switch_ms must be in [0, 1000] (0 = automatic)"),
        (["--engines", "0"], "engines must be >= 1"),
        (["--processes", "2", "--engines", "3"], "--engines cannot exceed --processes"),
        (["--engine-wait", "-5"], "engine_wait must be a number >= 0"),
        (["--engine-timeout", "0"], "engine_timeout must be a number > 0"),
        (["--role", "engine"], "--role engine needs --engine-socket"),
        (
            ["--processes", "1", "--front-end-listen", "127.0.0.1:50070"],
            "with one process, add the address to --listen",
        ),
        (["--front-end-index", "-2"], "front_end_index must be >= 0, or -1"),
        (
            ["--processes", "2", "--front-end-listen", "unix:///run/fe.sock"],
            "a unix socket per front end needs {i} in its path",
        ),
        (["--processes", "2", "--front-end-listen", "localhost"], "'localhost' is not HOST:PORT"),
        (["--processes", "3", "--front-end-listen", "127.0.0.1:65534"], "past 65535"),
        (
            ["--processes", "2", "--listen", "127.0.0.1:50071", "--front-end-listen", "127.0.0.1:50070"],
            "gives front end 1 127.0.0.1:50071, which --listen already has",
        ),
        (
            ["--processes", "2", "--listen", "unix:///run/facedet.sock"],
            "give each front end its own with --front-end-listen",
        ),
    ],
)
def test_validate_rejects(argv: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match="invalid configuration") as info:
        parse(argv)
    assert problem in str(info.value)


def test_validate_reports_every_problem_at_once() -> None:
    with pytest.raises(ValueError) as info:
        validate(ServerConfig(max_batch=-1, input_size=100, iou_threshold=2.0, listen=[]))
    message = str(info.value)
    for problem in (
        "max_batch must be >= 0 (0 = automatic)",
        "input_size must be a multiple of 32",
        "iou_threshold must be in (0, 1]",
        "at least one --listen address is needed",
    ):
        assert problem in message


def test_validate_accepts_edges() -> None:
    validate(
        ServerConfig(min_confidence=1.0, iou_threshold=1.0, max_delay_ms=0.0, input_size=32, max_batch=1)
    )


def test_environment_values_are_validated_too() -> None:
    with pytest.raises(ValueError, match="max_batch must be >= 0"):
        parse([], {"FACEDET_MAX_BATCH": "-1"})


def test_help_lists_every_setting_with_its_environment_variable() -> None:
    parser = argparse.ArgumentParser(prog="facedet serve")
    add_arguments(parser, {"FACEDET_MAX_BATCH": "3"})
    text = " ".join(parser.format_help().split())
    for setting in SETTINGS:
        assert setting.flag in text, setting.flag
        assert f"env {setting.env};" in text, setting.env
        assert setting.help.split()[0] in text
    # The default shown is the built-in one, not the environment's.
    assert "[env FACEDET_MAX_BATCH; default 0]" in text
    assert "0 = automatic: 8 on the CPU, 64 on a GPU" in text
    assert "0 = automatic: 256 on the CPU, 1024 on a GPU" in text
    assert "0 = automatic: one per CPU on the CPU, 3 on a GPU" in text
    assert "[env FACEDET_LISTEN; default 0.0.0.0:50051]" in text


def test_help_shows_the_settings_under_their_groups() -> None:
    parser = argparse.ArgumentParser(prog="facedet serve")
    add_arguments(parser, {})
    text = parser.format_help()
    positions = [text.index(f"\n{group.title}:\n") for group in GROUPS]
    assert positions == sorted(positions)  # each group once, in GROUPS order
    for setting in SETTINGS:
        group = GROUPS.index(setting.group)
        after = positions[group + 1] if group + 1 < len(GROUPS) else len(text)
        assert positions[group] < text.index(f"  {setting.flag} ") < after, setting.flag


def test_help_shows_every_default() -> None:
    parser = argparse.ArgumentParser(prog="facedet serve")
    add_arguments(parser, {})
    text = " ".join(parser.format_help().split())
    for setting in SETTINGS:
        assert f"[env {setting.env}; default {shown_default(setting)}" in text, setting.flag
    assert "default ]" not in text and "default None" not in text
    assert "[env FACEDET_ENGINE_SOCKET; default (none)]" in text
    assert "[env FACEDET_FRONT_END_LISTEN; default (none)]" in text
    assert "[env FACEDET_REUSE_PORT; default false; --no-reuse-port turns it off]" in text


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, False),
        (["--reuse-port"], {}, True),
        (["--reuse-port", "--listen", "127.0.0.1:1"], {}, True),  # takes no value of its own
        (["--no-reuse-port"], {"FACEDET_REUSE_PORT": "true"}, False),
        (["--reuse-port", "true"], {}, True),  # as the supervisor passes it to its children
        (["--reuse-port", "off"], {"FACEDET_REUSE_PORT": "yes"}, False),
        (["--reuse-port", "--no-reuse-port"], {}, False),  # the last one wins
        ([], {"FACEDET_REUSE_PORT": "1"}, True),
        ([], {"FACEDET_REUSE_PORT": "FALSE"}, False),
    ],
)
def test_a_boolean_setting_is_a_switch_and_its_environment_twin_reads_true_false(
    argv: list[str], environ: dict[str, str], expected: bool
) -> None:
    assert parse(argv, environ).reuse_port is expected


def test_a_bad_boolean_is_refused() -> None:
    for argv in (["--reuse-port", "maybe"], ["--no-reuse-port", "true"]):
        with pytest.raises(SystemExit):
            parse(argv)
    with pytest.raises(ValueError, match="FACEDET_REUSE_PORT='maybe' is not valid for --reuse-port"):
        parse([], {"FACEDET_REUSE_PORT": "maybe"})


def test_choices_ignore_case_on_the_command_line_and_in_the_environment() -> None:
    config = parse(["--log-level", "INFO", "--backend", "ONNXRuntime", "--log-format", "Json"])
    assert (config.log_level, config.backend, config.log_format) == ("info", "onnxruntime", "json")
    from_env = parse([], {"FACEDET_LOG_LEVEL": "WARNING", "FACEDET_ENGINE_PROCESS": "Off"})
    assert (from_env.log_level, from_env.engine_process) == ("warning", "off")
    assert all(choice == choice.lower() for s in SETTINGS for choice in s.choices or ())


def test_non_default_names_only_what_differs_from_the_defaults() -> None:
    assert non_default(parse([])) == {}
    config = parse(["--max-batch", "16", "--listen", "127.0.0.1:1", "--max-faces", "1000"])
    assert non_default(config) == {"max_batch": 16, "listen": ["127.0.0.1:1"]}


def test_every_group_has_settings_and_every_setting_a_known_type() -> None:
    assert {s.group for s in SETTINGS} == set(GROUPS)
    parsers = {s.name: s.parse for s in SETTINGS}
    assert (parsers["max_batch"], parsers["max_delay_ms"], parsers["model"]) == (int, float, str)
    assert parse([], {"FACEDET_REUSE_PORT": "yes"}).reuse_port is True
    assert [s.name for s in SETTINGS if s.repeatable] == ["listen", "front_end_listen"]


@pytest.mark.parametrize(("env", "value"), [("FACEDET_BACKEND", "bogus"), ("FACEDET_LOG_LEVEL", "loud")])
def test_environment_value_outside_the_choices_is_rejected(env: str, value: str) -> None:
    with pytest.raises((ValueError, SystemExit)):
        parse([], {env: value})


def test_malformed_environment_number_names_the_variable() -> None:
    with pytest.raises((ValueError, SystemExit)) as info:
        parse([], {"FACEDET_MAX_BATCH": "abc"})
    assert "FACEDET_MAX_BATCH" in str(info.value)


def test_nan_max_delay_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_delay_ms"):
        parse(["--max-delay-ms", "nan"])


def batching(config: ServerConfig) -> tuple[int, int, int, float]:
    return config.max_batch, config.batch_workers, config.max_queue, config.gil_switch_ms


CPU = (8, usable_cpus(), 256, 5.0)  # a batch in flight per CPU; 5 ms is Python's own switch interval
GPU = (64, 3, 1024, 1.0)  # what the GPU benchmarks ran with


def test_automatic_settings_default_to_0_and_accept_it() -> None:
    assert batching(parse([])) == (0, 0, 0, 0.0)
    assert batching(parse(["--max-batch", "0", "--batch-workers", "0", "--max-queue", "0"])) == (0, 0, 0, 0.0)


@pytest.mark.parametrize(
    ("backend", "device", "expected"),
    [
        ("onnxruntime", "cuda:0", CPU),  # ONNX Runtime runs on the CPU whatever --device says
        ("onnxruntime", "CPUExecutionProvider", CPU),  # the device an engine reports for it
        ("torch", "cpu", CPU),
        ("torch", "cuda:0", GPU),
        ("torch", "cuda", GPU),
        ("torch", "cuda:1", GPU),
        ("tensorrt", "cuda:0", GPU),
        ("tensorrt", "cpu", GPU),  # TensorRT has no CPU: its backend refuses such a device
    ],
)
def test_automatic_settings_follow_where_the_model_runs(
    backend: str, device: str, expected: tuple[int, int, int, float]
) -> None:
    config = parse([])
    resolved = resolve_automatic(config, backend, device)
    assert batching(resolved) == expected
    assert runs_on_gpu(backend, device) == (expected == GPU)
    # Only the automatic settings change, and the input is left as it was (a frozen copy).
    assert (
        dataclasses.replace(
            resolved, max_batch=0, batch_workers=0, max_queue=0, gil_switch_ms=0.0, intra_op_threads=0
        )
        == config
    )
    assert batching(config) == (0, 0, 0, 0.0)


def test_explicit_settings_win_over_automatic_ones() -> None:
    config = parse(["--max-batch", "16", "--gil-switch-ms", "2.5"], {"FACEDET_MAX_QUEUE": "77"})
    for backend, device in (("onnxruntime", "cpu"), ("torch", "cuda:0"), ("tensorrt", "cuda:0")):
        resolved = resolve_automatic(config, backend, device)
        workers = 3 if runs_on_gpu(backend, device) else usable_cpus()  # the one left automatic
        assert batching(resolved) == (16, workers, 77, 2.5), backend
    everything = parse(
        ["--max-batch", "2", "--batch-workers", "5", "--max-queue", "9", "--gil-switch-ms", "3"]
    )
    threads = max(1, usable_cpus() // 5)
    expected = dataclasses.replace(everything, intra_op_threads=threads)
    assert resolve_automatic(everything, "torch", "cuda:0") == expected


def test_onnx_runtime_threads_share_the_cpus_among_the_batches_in_flight() -> None:
    cpus = usable_cpus()
    assert resolve_automatic(parse([]), "onnxruntime", "cpu").intra_op_threads == 1
    one_batch = resolve_automatic(parse(["--batch-workers", "1"]), "onnxruntime", "cpu")
    assert one_batch.intra_op_threads == cpus
    given = resolve_automatic(parse(["--intra-op-threads", "3"]), "onnxruntime", "cpu")
    assert given.intra_op_threads == 3


def test_resolving_twice_changes_nothing() -> None:
    """Filled-in values count as given: resolving again, for any backend, keeps them."""
    once = resolve_automatic(parse([]), "tensorrt", "cuda:0")
    assert resolve_automatic(once, "onnxruntime", "cpu") == once


def test_front_end_addresses_put_the_index_in_or_add_it_to_the_port() -> None:
    templates = ["unix:///run/facedet/front-end-{i}.sock", "10.0.0.5:50070", "[::1]:6000", "h:5{i}"]
    assert front_end_addresses(templates, 0) == [
        "unix:///run/facedet/front-end-0.sock", "10.0.0.5:50070", "[::1]:6000", "h:50",
    ]  # fmt: skip
    assert front_end_addresses(templates, 3) == [
        "unix:///run/facedet/front-end-3.sock", "10.0.0.5:50073", "[::1]:6003", "h:53",
    ]  # fmt: skip


def test_only_a_front_end_of_processes_listens_on_its_own_addresses() -> None:
    flags = ["--listen", "0.0.0.0:50051", "--front-end-listen", "127.0.0.1:50070"]
    supervisor = parse(["--processes", "4", *flags])
    assert listen_addresses(supervisor) == ["0.0.0.0:50051"]
    child = parse(
        ["--processes", "1", "--front-end-index", "2", "--role", "frontend", "--engine-socket", "/e", *flags]
    )
    assert listen_addresses(child) == ["0.0.0.0:50051", "127.0.0.1:50072"]
    # An engine serves no gRPC: the flag it inherits with the rest is not its concern.
    engine = parse(["--role", "engine", "--engine-socket", "/e", *flags])
    assert listen_addresses(engine) == ["0.0.0.0:50051"]


def readme_row(setting: Setting) -> str:
    default = setting.default
    if isinstance(default, list):
        default = ", ".join(default)
    elif isinstance(default, bool):
        default = "true" if default else "false"
    shown = "(none)" if default in ("", None) else f"`{default}`"
    flags = f"`{setting.flag}`"
    if isinstance(setting.default, bool):
        flags += f", `--no-{setting.flag[2:]}`"
    return f"| {flags} | `{setting.env}` | {shown} | {setting.help} |"


REGENERATE = (
    "regenerate the README's table with: .venv/bin/python -c "
    "'from facedet_server.app.config import settings_table; print(settings_table())'"
)


def test_the_readme_lists_every_setting_as_the_code_has_it() -> None:
    """The README's settings table is the code's SETTINGS, group by group and row for row: a
    setting added, renamed or re-documented without the table fails here."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `--")]
    in_groups = [s for group in GROUPS for s in SETTINGS if s.group is group]
    assert table == [readme_row(s) for s in in_groups], REGENERATE
    assert settings_table() in readme, REGENERATE
