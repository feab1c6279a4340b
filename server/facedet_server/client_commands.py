"""placeholder; being written"""
import argparse


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    pass
