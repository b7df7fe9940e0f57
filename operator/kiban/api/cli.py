"""`kiban crd generate|check|validate`: keep crds/ in step with the pydantic models."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from kiban.api.crd import CRD_FILENAME, render_crd
from kiban.api.v1alpha1 import FoundationModel


def register(subparsers: argparse._SubParsersAction) -> None:
    crd = subparsers.add_parser("crd", help="generate, check or validate against the FoundationModel CRD")
    actions = crd.add_subparsers(dest="crd_command", required=True)

    generate = actions.add_parser("generate", help="write the CRD generated from the models")
    generate.add_argument("--output-dir", type=Path, default=Path("crds"))
    generate.set_defaults(func=generate_command)

    check = actions.add_parser("check", help="exit 1 with a diff when the checked-in CRD is stale")
    check.add_argument("--output-dir", type=Path, default=Path("crds"))
    check.set_defaults(func=check_command)

    validate = actions.add_parser("validate", help="parse FoundationModel YAML files with the models")
    validate.add_argument("files", nargs="+", type=Path)
    validate.set_defaults(func=validate_command)


def generate_command(args: argparse.Namespace) -> int:
    path = args.output_dir / CRD_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_crd(), encoding="utf-8")
    print(f"Wrote {path}")
    return 0


def stale_diff(checked_in: str, generated: str, path: Path) -> str:
    """Unified diff from the checked-in CRD to the generated one; empty when they agree."""
    return "".join(
        difflib.unified_diff(
            checked_in.splitlines(keepends=True),
            generated.splitlines(keepends=True),
            fromfile=f"{path} (checked in)",
            tofile=f"{path} (generated)",
        )
    )


def check_command(args: argparse.Namespace) -> int:
    path = args.output_dir / CRD_FILENAME
    checked_in = path.read_text(encoding="utf-8") if path.exists() else ""
    diff = stale_diff(checked_in, render_crd(), path)
    if diff:
        sys.stdout.write(diff)
        print(f"{path} is stale: run `make crds` and commit the result", file=sys.stderr)
        return 1
    print(f"{path} is up to date")
    return 0


def validate_command(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not document or document.get("kind") != "FoundationModel":
                continue
            name = document.get("metadata", {}).get("name", "?")
            try:
                FoundationModel.from_object(document)
            except ValidationError as exc:
                failed += 1
                print(f"{path}: FoundationModel {name} is invalid:\n{exc}", file=sys.stderr)
            else:
                print(f"{path}: FoundationModel {name} is valid")
    return 1 if failed else 0
