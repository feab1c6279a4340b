"""`facedet bench`: the load generator's command group."""

from __future__ import annotations

import argparse

from facedet_bench import load


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    load.add_parser(sub)
