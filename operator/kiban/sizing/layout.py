"""Where one replica's GPUs sit: tensor parallel within a node, pipeline stages across nodes (pure).

A layout is (tensor parallel T, pipeline parallel P, nodes N): T x P GPUs, P / N pipeline
stages of T GPUs on each node. The rules, which follow the layout vLLM recommends for
models bigger than a node (TP = GPUs of a node, PP = number of nodes):

- tensor parallel never spans nodes: T is a power of two no larger than one node's GPUs;
- every node runs the same number of whole stages: P is a multiple of N, and
  T x P / N fits one node (for one node, the profile's per-replica cap, e.g. 1 for MIG);
- a profile's max_gpus_per_replica caps T x P (MIG slices cannot be combined at all).

`candidate_layouts` lists every layout the spec's pins allow, fewest nodes first, then fewest
GPUs, then the widest tensor parallel (TP is faster than PP on one node). Numbers left `auto`
are chosen like this:
- nothing pinned: one node with T = 1, 2, 4, ... GPUs (P = 1), then N = 2 ... max nodes with
  one stage per node (P = N) and T = 1 ... a whole node;
- tensorParallelSize alone: stages are added (P = N, 2N, ...) until the model fits;
- pipelineParallelSize alone: T grows, then nodes are added;
- gpusPerReplica alone: T = gpusPerReplica on one node, else split into stages across nodes;
- nodesPerReplica alone: one stage per node, T sized from the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiban.api.v1alpha1 import GpuCount
from kiban.config import AcceleratorProfile

DEFAULT_MAX_NODES = 4  # the operator's KIBAN_MAX_NODES_PER_REPLICA default


@dataclass(frozen=True, order=True)
class Layout:
    """One replica: T-way tensor parallel, P pipeline stages, spread over N nodes."""

    tensor_parallel: int
    pipeline_parallel: int
    nodes: int = 1

    @property
    def gpus(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // self.nodes


@dataclass(frozen=True)
class Pins:
    """The parallelism numbers the spec fixed; None where it says auto."""

    gpus: int | None = None
    tensor_parallel: int | None = None
    pipeline_parallel: int | None = None
    nodes: int | None = None

    @classmethod
    def of(cls, gpus: GpuCount = "auto", tensor_parallel: GpuCount = "auto",
           pipeline_parallel: GpuCount = "auto", nodes: GpuCount = "auto") -> Pins:
        def number(value: GpuCount) -> int | None:
            return value if isinstance(value, int) else None

        return cls(number(gpus), number(tensor_parallel), number(pipeline_parallel), number(nodes))

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.gpus, self.tensor_parallel, self.pipeline_parallel, self.nodes))

    def describe(self) -> str:
        """'gpusPerReplica 16, tensorParallelSize 8' (the pinned fields, by their spec names)."""
        named = (("gpusPerReplica", self.gpus), ("tensorParallelSize", self.tensor_parallel),
                 ("pipelineParallelSize", self.pipeline_parallel), ("nodesPerReplica", self.nodes))
        return ", ".join(f"{name} {value}" for name, value in named if value is not None)


def is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def node_gpu_limit(profile: AcceleratorProfile, nodes: int) -> int:
    """GPUs one member may use: for a one-node replica the profile's per-replica limit, across
    nodes a whole node (the total is capped separately by max_gpus_per_replica)."""
    return profile.replica_gpu_limit if nodes == 1 else profile.gpus_per_node


def _pipeline_options(pins: Pins, nodes: int, per_node: int) -> list[int]:
    if pins.pipeline_parallel is not None:
        return [pins.pipeline_parallel]
    if pins.gpus is not None and pins.tensor_parallel is not None:
        return [pins.gpus // pins.tensor_parallel] if pins.gpus % pins.tensor_parallel == 0 else []
    if pins.tensor_parallel is not None:  # stages of T GPUs, as many per node as fit
        return [nodes * k for k in range(1, per_node // pins.tensor_parallel + 1)]
    if pins.gpus is not None:  # the pinned count cut into whole stages per node
        return [nodes * k for k in range(1, pins.gpus // nodes + 1)]
    return [nodes]


def _tensor_options(pins: Pins, stages: int, nodes: int, per_node: int) -> list[int]:
    if pins.tensor_parallel is not None:
        return [pins.tensor_parallel]
    if pins.gpus is not None:
        return [pins.gpus // stages] if pins.gpus % stages == 0 else []
    stages_per_node = stages // nodes
    return [t for t in (2**i for i in range(0, 12)) if t * stages_per_node <= per_node]


def _allowed(layout: Layout, pins: Pins, profile: AcceleratorProfile) -> bool:
    per_node = node_gpu_limit(profile, layout.nodes)
    return (
        layout.pipeline_parallel % layout.nodes == 0
        and is_power_of_two(layout.tensor_parallel)
        and layout.tensor_parallel <= per_node
        and layout.gpus_per_node <= per_node
        and (pins.gpus is None or layout.gpus == pins.gpus)
        and (profile.max_gpus_per_replica is None or layout.gpus <= profile.max_gpus_per_replica)
    )


def candidate_layouts(pins: Pins, profile: AcceleratorProfile, max_nodes: int = DEFAULT_MAX_NODES) -> list[Layout]:
    """Every layout the pins allow on `profile` within `max_nodes`, in order of preference."""
    if pins.nodes is not None:
        node_counts = [pins.nodes] if pins.nodes <= max_nodes else []
    else:
        node_counts = list(range(1, max_nodes + 1))
    found: set[Layout] = set()
    for nodes in node_counts:
        per_node = node_gpu_limit(profile, nodes)
        for stages in _pipeline_options(pins, nodes, per_node):
            if stages < 1 or stages % nodes:
                continue
            for tensor in _tensor_options(pins, stages, nodes, per_node):
                layout = Layout(tensor, stages, nodes)
                if tensor >= 1 and _allowed(layout, pins, profile):
                    found.add(layout)
    return sorted(found, key=lambda l: (l.nodes, l.gpus, -l.tensor_parallel))
