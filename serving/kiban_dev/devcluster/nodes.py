"""Simulated GPU nodes: pure builders of Node objects (plain dicts) for kwok to manage.

Labels follow NVIDIA GPU feature discovery, capacities follow the NVIDIA device plugin, so the
operator's accelerator profiles select these nodes exactly as they would select real ones.
kwok manages a node when it carries the annotation kwok.x-k8s.io/node=fake; the matching taint
keeps real workloads (none here, but kind users share the convention) off fake nodes unless they
tolerate it, so we do not add it: every pod in the dev cluster is meant to land on kwok nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
KWOK_LABEL = {"type": "kwok"}


@dataclass(frozen=True)
class NodeKind:
    """One kind of simulated machine: its labels, resources and whether GPUs taint it."""

    name: str
    labels: Mapping[str, str]
    capacity: Mapping[str, str]
    gpu_tainted: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)


NODE_KINDS: dict[str, NodeKind] = {
    "h100": NodeKind(
        name="h100",
        labels={
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            "nvidia.com/gpu.memory": "81559",
            "nvidia.com/gpu.count": "8",
            "nvidia.com/gpu.present": "true",
        },
        capacity={"nvidia.com/gpu": "8", "cpu": "192", "memory": "2Ti", "pods": "110"},
    ),
    "l4": NodeKind(
        name="l4",
        labels={
            "nvidia.com/gpu.product": "NVIDIA-L4",
            "nvidia.com/gpu.memory": "23034",
            "nvidia.com/gpu.count": "4",
            "nvidia.com/gpu.present": "true",
        },
        capacity={"nvidia.com/gpu": "4", "cpu": "48", "memory": "192Gi", "pods": "110"},
    ),
    "a100-mig": NodeKind(
        name="a100-mig",
        labels={
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
            "nvidia.com/gpu.count": "2",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/mig.strategy": "mixed",
            "nvidia.com/mig-1g.10gb.count": "14",
            "nvidia.com/mig-1g.10gb.memory": "9728",
        },
        capacity={"nvidia.com/mig-1g.10gb": "14", "cpu": "128", "memory": "1Ti", "pods": "110"},
    ),
    "cpu": NodeKind(
        name="cpu",
        labels={},
        capacity={"cpu": "32", "memory": "128Gi", "pods": "110"},
        gpu_tainted=False,
    ),
}

# four H100 nodes: two LeaderWorkerSet groups of two nodes each (a 405B bf16 replica), or one
# group rolling with a surge group beside it
DEFAULT_POOL: dict[str, int] = {"h100": 4, "l4": 3, "a100-mig": 1, "cpu": 1}


def node_name(kind: str, index: int) -> str:
    """Stable, readable names: kiban-h100-0, kiban-a100-mig-0, kiban-cpu-0."""
    return f"kiban-{kind}-{index}"


def build_node(kind: str, index: int) -> dict:
    """A Node object of `kind` that kwok will manage (status is filled in by kwok's stages)."""
    if kind not in NODE_KINDS:
        raise ValueError(f"node kind {kind!r} is unknown; known kinds: {', '.join(NODE_KINDS)}")
    if index < 0:
        raise ValueError(f"node index must be >= 0, got {index}")
    spec_kind = NODE_KINDS[kind]
    name = node_name(kind, index)
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "node.kubernetes.io/instance-type": f"kiban-sim-{kind}",
        "kiban.dev/node-kind": kind,
        **KWOK_LABEL,
        **spec_kind.labels,
    }
    spec: dict = {}
    if spec_kind.gpu_tainted:
        spec["taints"] = [dict(GPU_TAINT)]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": dict(KWOK_ANNOTATION)},
        "spec": spec,
        "status": {
            "capacity": dict(spec_kind.capacity),
            "allocatable": dict(spec_kind.capacity),
        },
    }


def build_pool(counts: Mapping[str, int] | None = None) -> list[dict]:
    """Nodes for a pool such as {"h100": 3, "l4": 3, "a100-mig": 1, "cpu": 1}."""
    counts = DEFAULT_POOL if counts is None else counts
    nodes: list[dict] = []
    for kind, count in counts.items():
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"node count for {kind!r} must be a non-negative integer, got {count!r}")
        nodes.extend(build_node(kind, index) for index in range(count))
    if not nodes:
        raise ValueError("the node pool is empty; ask for at least one node")
    return nodes
