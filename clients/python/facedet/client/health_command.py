"""`facedet health ADDR`: ask a server's grpc.health.v1 service, for container HEALTHCHECKs and
scripts. Exit 0 when SERVING, 1 when it answers anything else (NOT_SERVING while loading or
draining), 3 when nothing answers. Kubernetes needs none of this: its probes speak gRPC health.
"""

from __future__ import annotations

import argparse
import os
import sys

from facedet.client import FaceDetectorClient, FaceDetectorError

EXIT_SERVING, EXIT_NOT_SERVING, EXIT_UNREACHABLE = 0, 1, 3
DEFAULT_TIMEOUT = 3.0  # a HEALTHCHECK's own timeout is longer, so this one ends first


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = sub.add_parser(
        "health",
        help="ask a server's gRPC health service; exit 0 when SERVING",
        description="Ask grpc.health.v1.Health/Check at ADDR and print the status. Exit status: 0 "
        "SERVING, 1 another status (NOT_SERVING: loading or draining), 3 no answer.",
    )
    health.add_argument(
        "address",
        nargs="?",
        default=os.environ.get("FACEDET_SERVER", "localhost:50051"),
        metavar="ADDR",
        help="HOST:PORT or unix:///path.sock [env FACEDET_SERVER; default localhost:50051]",
    )
    health.add_argument("--service", default="", help="service name to ask about (default: the server's)")
    health.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds for the whole check, connecting included (default {DEFAULT_TIMEOUT:g})",
    )
    health.set_defaults(func=run_health)


def run_health(args: argparse.Namespace) -> int:
    client = FaceDetectorClient(args.address, timeout=args.timeout, connect_timeout=args.timeout)
    try:
        status = client.health(args.service, timeout=args.timeout)
    except FaceDetectorError as exc:
        # An answer that is an error (NOT_FOUND for an unknown --service) is not "unreachable".
        unreachable = exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        print(f"facedet health: {args.address}: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE if unreachable else EXIT_NOT_SERVING
    finally:
        client.close()
    print(status)
    return EXIT_SERVING if status == "SERVING" else EXIT_NOT_SERVING
