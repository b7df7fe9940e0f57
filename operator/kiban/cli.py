"""The `kiban` command line: each subcommand lives beside the code it drives.

Every module listed in SUBCOMMAND_MODULES exposes `register(subparsers)`, which adds its
parser and sets `func` (called with the parsed args, returning an exit code). Developer
tooling (the `kiban-dev` distribution: `kiban dev-cluster`, `kiban drift eval`) adds its own
subcommands through the `kiban.subcommands` entry-point group, so the operator image, which
installs only this distribution, has none of them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

SUBCOMMAND_MODULES = (
    "kiban.operator_cli",  # kiban run
    "kiban.capacity.cli",  # kiban capacity plan|mmc|vllm
    "kiban.api.cli",  # kiban crd
    "kiban.gateway.cli",  # kiban gateway
)
PLUGIN_GROUP = "kiban.subcommands"


def subcommand_modules() -> list[str]:
    """The runtime subcommands, then those other installed distributions register."""
    plugins = sorted(ep.value for ep in entry_points(group=PLUGIN_GROUP))
    return [*SUBCOMMAND_MODULES, *(name for name in plugins if name not in SUBCOMMAND_MODULES)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiban", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in subcommand_modules():
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
