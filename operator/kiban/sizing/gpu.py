"""The layout of one replica (GPUs, tensor and pipeline parallel, nodes) from model size and GPU memory (pure).

The memory rule, per replica of G GPUs of M GiB each at gpuMemoryUtilization u:

    usable(G)   = G * M * u
    weights     = parameters * bytes per parameter           (bf16/fp16 2, fp8 1, awq/gptq/bnb 0.5)
    kv_reserve  = KV_RESERVE_FRACTION * weights               (0.25)
    overhead(G) = RUNTIME_OVERHEAD_GIB_PER_GPU * G            (1 GiB: CUDA context, activations, graphs)
    fits(G)    <=> weights + kv_reserve + overhead(G) <= usable(G)

With everything `auto`, G is the smallest power of two that fits one node (`gpusPerNode`, or
the profile's own cap: MIG slices 1), tensor parallel G. A model bigger than a node gets
tensor parallel = the node's GPUs and one pipeline stage per node over the fewest nodes that
fit, up to the operator's KIBAN_MAX_NODES_PER_REPLICA (default 4): the layout vLLM recommends
(kiban.sizing.layout has the rules). Why a fraction of the weights for
the KV cache: KV bytes per token grow with the model (layers x KV heads x head size), which
the spec does not state; a quarter of the weight bytes leaves Llama-class models room for
tens of thousands of cached tokens (8B: ~30k tokens at 128 KiB/token; 70B: ~100k at
320 KiB/token). It is a floor for a useful batch, not a throughput target: the capacity model
sizes throughput by adding replicas. Quantized checkpoints keep embeddings in 16 bits, so
0.5 byte per parameter slightly underestimates them; the reserve absorbs that.

Explicit numbers (gpusPerReplica, tensorParallelSize, pipelineParallelSize, nodesPerReplica)
are honoured: the numbers left auto are searched as above, and when no layout holds the KV
reserve the first that holds the weights is used, the shortfall reported in the message (the
user may have capped maxModelLen). They fail only when the weights alone cannot fit, or when no
layout exists (tensor parallel wider than a node, more nodes than the operator allows).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kiban.api.v1alpha1 import Dtype, FoundationModelSpec, GpuCount, Quantization
from kiban.config import AcceleratorProfile
from kiban.sizing.layout import DEFAULT_MAX_NODES, Layout, Pins, candidate_layouts

GIB = 1024**3
KV_RESERVE_FRACTION = 0.25
RUNTIME_OVERHEAD_GIB_PER_GPU = 1.0
MAX_NODES_SETTING = "KIBAN_MAX_NODES_PER_REPLICA"

_QUANTIZED_BYTES = {
    Quantization.fp8: 1.0,
    Quantization.awq: 0.5,
    Quantization.gptq: 0.5,
    Quantization.bitsandbytes: 0.5,
}


class SizingReason(StrEnum):
    auto_sized = "AutoSized"
    user_specified = "UserSpecified"
    parameters_unknown = "ParametersUnknown"
    model_does_not_fit = "ModelDoesNotFit"
    exceeds_node_gpus = "ExceedsNodeGpus"
    exceeds_node_limit = "ExceedsNodeLimit"


@dataclass(frozen=True)
class GpuSizing:
    """The resolved parallelism for one replica, whether it fits, and the arithmetic behind it."""

    gpus_per_replica: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    fits: bool
    reason: SizingReason
    message: str
    usable_gib: float
    weights_gib: float | None = None
    kv_reserve_gib: float | None = None
    required_gib: float | None = None
    nodes_per_replica: int = 1

    @property
    def gpus_per_node(self) -> int:
        """GPUs each pod of the replica requests (all of them on one node)."""
        return self.gpus_per_replica // self.nodes_per_replica

    @property
    def multi_node(self) -> bool:
        return self.nodes_per_replica > 1


def bytes_per_parameter(dtype: Dtype, quantization: Quantization) -> float:
    """Weight bytes per parameter: quantization decides when set, else the 16-bit dtype (auto = 16-bit)."""
    if quantization in _QUANTIZED_BYTES:
        return _QUANTIZED_BYTES[quantization]
    return 2.0  # auto, bfloat16 and float16 are all 16-bit weights


def usable_gib(gpus: int, gpu_memory_gib: float, utilization: float) -> float:
    return gpus * gpu_memory_gib * utilization


def required_gib(weights_gib: float, gpus: int) -> float:
    """Weights plus the KV-cache reserve plus per-GPU runtime overhead."""
    return weights_gib * (1 + KV_RESERVE_FRACTION) + RUNTIME_OVERHEAD_GIB_PER_GPU * gpus


def _arithmetic(layout: Layout, per_gpu: str) -> str:
    """'8 x 80 GiB x 0.9' on one node, '2 nodes x 8 x 80 GiB x 0.9' across nodes."""
    if layout.nodes == 1:
        return f"{layout.gpus} x {per_gpu}"
    return f"{layout.nodes} nodes x {layout.gpus_per_node} x {per_gpu}"


def _parallelism(layout: Layout) -> str:
    if layout.nodes == 1:
        return ""
    return (f" (tensor parallel {layout.tensor_parallel} within a node x pipeline parallel "
            f"{layout.pipeline_parallel} across {layout.nodes} nodes)")


def _no_layout_message(pins: Pins, profile: AcceleratorProfile, max_nodes: int) -> tuple[SizingReason, str]:
    """Why the pinned numbers have no layout at all on this profile (reason, message)."""
    if pins.nodes is not None and pins.nodes > max_nodes:
        return SizingReason.exceeds_node_limit, (
            f"spec.accelerator.nodesPerReplica {pins.nodes} exceeds the operator's limit of {max_nodes} "
            f"nodes per replica ({MAX_NODES_SETTING})"
        )
    cap = profile.max_gpus_per_replica
    if pins.gpus is not None and cap is not None and pins.gpus > cap:
        return SizingReason.exceeds_node_gpus, (
            f"{pins.gpus} GPUs per replica exceeds the {cap} one replica of {profile.name} can get"
        )
    if pins.tensor_parallel is not None and pins.tensor_parallel > profile.replica_gpu_limit:
        return SizingReason.exceeds_node_gpus, (
            f"tensor parallel {pins.tensor_parallel} exceeds the {profile.replica_gpu_limit} GPUs one node of "
            f"{profile.name} gives a replica (tensor parallel stays within a node)"
        )
    return SizingReason.exceeds_node_gpus, (
        f"no layout of {pins.describe()} fits {profile.name}: {profile.gpus_per_node} GPUs per node, "
        f"at most {max_nodes} nodes per replica ({MAX_NODES_SETTING}), tensor parallel within a node"
    )


def size_gpus(
    *,
    parameters: float | None,
    dtype: Dtype,
    quantization: Quantization,
    profile: AcceleratorProfile,
    gpu_memory_utilization: float,
    gpus_per_replica: GpuCount = "auto",
    tensor_parallel_size: GpuCount = "auto",
    pipeline_parallel_size: GpuCount = "auto",
    nodes_per_replica: GpuCount = "auto",
    max_nodes: int = DEFAULT_MAX_NODES,
) -> GpuSizing:
    """Resolve the layout of one replica (GPUs, tensor and pipeline parallel, nodes) for one
    model on one profile, with the memory arithmetic behind it."""
    per_gpu = f"{profile.gpu_memory_gib:g} GiB x {gpu_memory_utilization:g}"
    weights = parameters * bytes_per_parameter(dtype, quantization) / GIB if parameters else None
    kv = weights * KV_RESERVE_FRACTION if weights is not None else None
    pins = Pins.of(gpus_per_replica, tensor_parallel_size, pipeline_parallel_size, nodes_per_replica)

    def usable(layout: Layout) -> float:
        return usable_gib(layout.gpus, profile.gpu_memory_gib, gpu_memory_utilization)

    def result(layout: Layout, fits: bool, reason: SizingReason, message: str) -> GpuSizing:
        return GpuSizing(
            gpus_per_replica=layout.gpus,
            tensor_parallel_size=layout.tensor_parallel,
            pipeline_parallel_size=layout.pipeline_parallel,
            nodes_per_replica=layout.nodes,
            fits=fits,
            reason=reason,
            message=message,
            usable_gib=round(usable(layout), 2),
            weights_gib=None if weights is None else round(weights, 2),
            kv_reserve_gib=None if kv is None else round(kv, 2),
            required_gib=None if weights is None else round(required_gib(weights, layout.gpus), 2),
        )

    layouts = candidate_layouts(pins, profile, max_nodes)
    if not layouts:
        reason, message = _no_layout_message(pins, profile, max_nodes)
        wanted = pins.gpus or (pins.tensor_parallel or 1) * (pins.pipeline_parallel or 1)
        shown = Layout(pins.tensor_parallel or wanted, wanted // (pins.tensor_parallel or wanted), 1)
        return result(shown, False, reason, message)
    if weights is None:
        first = layouts[0]
        if pins.any:
            return result(first, True, SizingReason.user_specified,
                          f"{first.gpus} GPUs per replica as specified{_parallelism(first)}")
        return result(first, True, SizingReason.parameters_unknown, "spec.model.parameters unset: 1 GPU per replica")

    def holds(layout: Layout) -> str:
        return (f"{_arithmetic(layout, per_gpu)} = {usable(layout):.1f} GiB holds weights {weights:.1f} GiB "
                f"+ KV reserve {kv:.1f} GiB + overhead {RUNTIME_OVERHEAD_GIB_PER_GPU * layout.gpus:.0f} GiB"
                f"{_parallelism(layout)}")

    roomy = next((l for l in layouts if required_gib(weights, l.gpus) <= usable(l)), None)
    if roomy is not None and not pins.any:
        return result(roomy, True, SizingReason.auto_sized, holds(roomy))
    if roomy is not None:
        return result(roomy, True, SizingReason.user_specified, f"as specified: {holds(roomy)}")
    if pins.any:  # explicit numbers are honoured while the weights fit; the KV shortfall is a note
        floor = next((l for l in layouts if weights + RUNTIME_OVERHEAD_GIB_PER_GPU * l.gpus <= usable(l)), None)
        if floor is not None:
            return result(
                floor, True, SizingReason.user_specified,
                f"{floor.gpus} GPUs per replica as specified: weights {weights:.1f} GiB of {usable(floor):.1f} GiB "
                f"usable; below the {kv:.1f} GiB KV-cache reserve{_parallelism(floor)}",
            )
        largest = max(layouts, key=lambda l: l.gpus)  # the first of the most GPUs the pins allow
        return result(
            largest, False, SizingReason.model_does_not_fit,
            f"weights {weights:.1f} GiB + overhead exceed {usable(largest):.1f} GiB usable on "
            f"{_arithmetic(largest, per_gpu)} ({pins.describe()})",
        )
    largest = max(layouts, key=lambda l: l.gpus)
    limit = f" (at most {max_nodes} nodes per replica, {MAX_NODES_SETTING})" if largest.nodes > 1 else ""
    return result(
        largest, False, SizingReason.model_does_not_fit,
        f"needs {required_gib(weights, largest.gpus):.1f} GiB (weights {weights:.1f} + KV reserve {kv:.1f} "
        f"+ overhead) but {_arithmetic(largest, per_gpu)} = {usable(largest):.1f} GiB is the most one replica "
        f"of {profile.name} can get{limit}",
    )


def resolve_sizing(spec: FoundationModelSpec, profile: AcceleratorProfile,
                   max_nodes: int = DEFAULT_MAX_NODES) -> GpuSizing:
    """size_gpus for a FoundationModel spec on its accelerator profile (max_nodes: the operator's
    KIBAN_MAX_NODES_PER_REPLICA)."""
    return size_gpus(
        parameters=spec.model.parameter_count,
        dtype=spec.model.dtype,
        quantization=spec.model.quantization,
        profile=profile,
        gpu_memory_utilization=spec.engine.gpu_memory_utilization,
        gpus_per_replica=spec.accelerator.gpus_per_replica,
        tensor_parallel_size=spec.accelerator.tensor_parallel_size,
        pipeline_parallel_size=spec.accelerator.pipeline_parallel_size,
        nodes_per_replica=spec.accelerator.nodes_per_replica,
        max_nodes=max_nodes,
    )
