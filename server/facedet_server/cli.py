"""The `facedet` command: serve, detect, stream, models, bench, convert."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from facedet_server import __version__, config


def _serve(args: argparse.Namespace) -> int:
    import os

    import structlog

    from facedet_server.app import StartupError, serve
    from facedet_server.logs import configure_logging
    from facedet_server.modelfiles import ModelFileError

    try:
        server_config = config.from_args(args)
    except ValueError as exc:
        print(f"facedet serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(server_config.log_format, server_config.log_level)
    if server_config.role != "server" or "FACEDET_PROCESS_INDEX" in os.environ:
        # Several processes write one log: every line says which one wrote it.
        structlog.contextvars.bind_contextvars(
            role=server_config.role, process=os.environ.get("FACEDET_PROCESS_INDEX", "0")
        )
    if config.supervises(server_config):
        from facedet_server import supervisor

        return supervisor.run(server_config, sys.argv[1:])
    if server_config.role == "engine":
        from facedet_server.engine.process import run_engine

        try:
            run_engine(server_config)
        except (ModelFileError, OSError) as exc:  # OSError: the socket cannot be created
            print(f"facedet serve --role engine: {exc}", file=sys.stderr)
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
        print(f"facedet serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _models(args: argparse.Namespace) -> int:
    from facedet_server import modelfiles

    if args.models_command == "list":
        for entry in modelfiles.REGISTRY.values():
            cached = modelfiles.cache_path(entry)
            state = "cached" if cached.is_file() else "not cached"
            print(f"{entry.name}\t{entry.filename}\t{state}\t{entry.license}\t{entry.url}")
        return 0
    try:
        path = modelfiles.pull(args.name, url=args.url)
    except modelfiles.ModelFileError as exc:
        print(f"facedet models pull: {exc}", file=sys.stderr)
        return 1
    print(path)
    if args.export:
        try:
            from facedet_converter.cache import exported_model

            print(exported_model(path))
        except ImportError as exc:
            print(f"facedet models pull --export: {exc}", file=sys.stderr)
            return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facedet", description="Face detection over gRPC (YOLOv5-Face).")
    parser.add_argument("--version", action="version", version=f"facedet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    pull.add_argument("name", help="model name, e.g. yolov5n-0.5")
    pull.add_argument("--url", help="download from this URL instead of the pinned one (same sha256 required)")
    pull.add_argument(
        "--export",
        action="store_true",
        help="also convert it to our dynamic-shape ONNX (needs facedet[convert])",
    )
    models.set_defaults(func=_models)

    from facedet_server import bench, client_commands

    client_commands.add_parsers(sub)
    bench.add_parser(sub)
    try:
        from facedet_converter import cli as convert_cli
    except ImportError:
        convert_cli = None  # type: ignore[assignment]
    if convert_cli is not None:
        convert = sub.add_parser(
            "convert", help="import upstream weights, export ONNX, build TensorRT engines"
        )
        convert_cli.add_arguments(convert)
        convert.set_defaults(func=convert_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
