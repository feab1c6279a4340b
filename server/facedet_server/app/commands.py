"""`facedet serve` and `facedet models`: the server's own commands."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from facedet_server.app import config


def _serve(args: argparse.Namespace) -> int:
    import os

    import structlog

    from facedet_server.app import stderr_relay
    from facedet_server.app.logs import configure_logging, resolved_format
    from facedet_server.app.server import StartupError, serve
    from facedet_server.model.files import ModelFileError

    try:
        server_config = config.from_args(args)
    except ValueError as exc:
        print(f"facedet serve: {exc}", file=sys.stderr)
        return 2
    # Our own log lines and start-up errors: the real stderr. In JSON mode everything else on
    # fd 2 (native libraries, other Python code: torch's warnings) is relayed as JSON records.
    errors = sys.stderr
    if resolved_format(server_config.log_format) == "json":
        errors = stderr_relay.start() or sys.stderr
    configure_logging(server_config.log_format, server_config.log_level, errors)
    if server_config.role != "server" or "FACEDET_PROCESS_INDEX" in os.environ:
        # Several processes write one log: every line says which one wrote it.
        structlog.contextvars.bind_contextvars(
            role=server_config.role, process=os.environ.get("FACEDET_PROCESS_INDEX", "0")
        )
    gpus: list[str] = []
    if server_config.role == "server":
        from facedet_server.app import topology

        try:  # --processes auto, the front ends' own addresses, the GPUs of --devices
            server_config, gpus = topology.resolve_for_host(server_config)
        except ValueError as exc:
            print(f"facedet serve: {exc}", file=errors)
            return 2
    if config.supervises(server_config):
        from facedet_server.app import supervisor

        return supervisor.run(server_config, sys.argv[1:], gpus, errors)
    if server_config.role == "engine":
        from facedet_server.app.engine_process import run_engine

        try:
            run_engine(server_config)
        # OSError: the socket cannot be created; StartupError: FACEDET_FAULT_INJECTION set wrong
        except (ModelFileError, OSError, StartupError) as exc:
            print(f"facedet serve --role engine: {exc}", file=errors)
            return 1
        return 0
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass  # uvloop is optional; asyncio's own loop works, a little slower
    try:
        asyncio.run(serve(server_config))
    except (ModelFileError, StartupError) as exc:
        print(f"facedet serve: {exc}", file=errors)
        return 1
    return 0


def _models(args: argparse.Namespace) -> int:
    from facedet_server.model import files as modelfiles

    if args.models_command == "list":
        for entry in modelfiles.REGISTRY.values():
            cached = all(modelfiles.cache_path(file).is_file() for file in entry.files)
            state = "cached" if cached else "not cached"
            print(f"{entry.name}\t{entry.filename}\t{state}\t{entry.license}\t{entry.url}")
        return 0
    try:
        path = modelfiles.pull(args.name, url=args.url)
    except modelfiles.ModelFileError as exc:
        print(f"facedet models pull: {exc}", file=sys.stderr)
        return 1
    print(path)
    if args.export:
        if modelfiles.REGISTRY[args.name].format == "ncnn":
            from facedet_server.app.server import converted_ncnn

            try:
                print(converted_ncnn(path))
            except modelfiles.ModelFileError as exc:
                print(f"facedet models pull --export: {exc}", file=sys.stderr)
                return 1
            return 0
        try:
            # The converter sits above the server (it imports the model description from here),
            # so it is asked for by name, the way the facedet command finds its command groups.
            cache = importlib.import_module("facedet_converter.cache")
            print(cache.exported_model(path))
        except ImportError as exc:
            print(f"facedet models pull --export: {exc}", file=sys.stderr)
            return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the FaceDetector gRPC server. Every flag has a FACEDET_* "
        "environment variable; the flag wins.",
    )
    config.add_arguments(serve)
    serve.set_defaults(func=_serve)

    models = sub.add_parser("models", help="list or fetch model files")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_sub.add_parser("list", help="known models and whether they are cached")
    pull = models_sub.add_parser(
        "pull",
        help="fetch a model into the cache ($FACEDET_HOME, default ~/.cache/facedet), checking sha256",
        description="Looks in $FACEDET_MODEL_DIR first (an offline mirror), then the cache, then downloads "
        "from the pinned URL; a file whose sha256 differs is refused.",
    )
    pull.add_argument("name", help="model name, e.g. yolov5n-0.5 or yolov5n-face")
    pull.add_argument("--url", help="download from this URL instead of the pinned one (same sha256 required)")
    pull.add_argument(
        "--export",
        action="store_true",
        help="also convert it to our dynamic-shape ONNX (needs facedet[convert])",
    )
    models.set_defaults(func=_models)
