"""The `kiban` command line: each subcommand lives beside the code it drives.

Every module listed in SUBCOMMAND_MODULES exposes `register(subparsers)`, which adds its
parser and sets `func` (called with the parsed args, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "kiban.operator_cli",  # kiban run
    "kiban.capacity.cli",  # kiban capacity plan|mmc|vllm
    "kiban.api.cli",  # kiban crd
    "kiban.drift.cli",  # kiban drift eval
    "kiban.devcluster.cli",  # kiban dev-cluster
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiban", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
