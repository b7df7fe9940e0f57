"""Dress real kind nodes as GPU nodes: the same labels, taints and extended-resource capacity as
the simulated kinds in nodes.py, applied with kubectl (used by hack/kind/e2e.sh).

Extended resources are advertised by patching the node's status subresource, as the Kubernetes
documentation describes for resources no device plugin reports.

    python -m kiban_dev.devcluster.kind_nodes kiban-worker=h100 kiban-worker2=l4 ...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kiban_dev.devcluster.nodes import NODE_KINDS, build_node

EXTENDED_PREFIXES = ("nvidia.com/",)


def kubectl_commands(node_name: str, kind: str) -> list[list[str]]:
    """kubectl argument lists (without the kubectl binary) that turn `node_name` into a `kind` node."""
    template = build_node(kind, 0)  # raises naming the kind when unknown
    labels = {k: v for k, v in template["metadata"]["labels"].items()
              if k.startswith("nvidia.com/") or k == "kiban.dev/node-kind"}
    commands: list[list[str]] = []
    if labels:
        commands.append(["label", "node", node_name, "--overwrite", *(f"{k}={v}" for k, v in labels.items())])
    for taint in template["spec"].get("taints", []):
        commands.append(["taint", "node", node_name, "--overwrite",
                         f"{taint['key']}={taint['value']}:{taint['effect']}"])
    extended = {k: v for k, v in template["status"]["capacity"].items() if k.startswith(EXTENDED_PREFIXES)}
    if extended:
        patch = [
            {"op": "add", "path": f"/status/{field}/{name.replace('~', '~0').replace('/', '~1')}", "value": value}
            for field in ("capacity", "allocatable") for name, value in extended.items()
        ]
        commands.append(["patch", "node", node_name, "--subresource=status", "--type=json", "-p", json.dumps(patch)])
    return commands


def parse_assignments(args: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for arg in args:
        node, sep, kind = arg.partition("=")
        if not sep or not node or kind not in NODE_KINDS:
            raise ValueError(f"expected NODE=KIND with KIND one of {', '.join(NODE_KINDS)}, got {arg!r}")
        pairs.append((node, kind))
    return pairs


def main(argv: list[str] | None = None) -> int:
    try:
        assignments = parse_assignments(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"kind_nodes: {exc}", file=sys.stderr)
        return 2
    kubectl = os.environ.get("KUBECTL", "kubectl")
    for node, kind in assignments:
        for command in kubectl_commands(node, kind):
            subprocess.run([kubectl, *command], check=True)
        print(f"Dressed node as {kind}: {node}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
