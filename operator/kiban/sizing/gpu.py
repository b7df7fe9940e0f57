"""GPUs per replica and tensor-parallel degree from model size and GPU memory (pure).

The memory rule, per replica of G GPUs of M GiB each at gpuMemoryUtilization u:

    usable(G)   = G * M * u
    weights     = parameters * bytes per parameter           (bf16/fp16 2, fp8 1, awq/gptq/bnb 0.5)
    kv_reserve  = KV_RESERVE_FRACTION * weights               (0.25)
    overhead(G) = RUNTIME_OVERHEAD_GIB_PER_GPU * G            (1 GiB: CUDA context, activations, graphs)
    fits(G)    <=> weights + kv_reserve + overhead(G) <= usable(G)

With tensor parallelism `auto`, G is the smallest power of two that fits, up to one node
(`gpusPerNode`) or the profile's own cap (MIG slices: 1). Why a fraction of the weights for
the KV cache: KV bytes per token grow with the model (layers x KV heads x head size), which
the spec does not state; a quarter of the weight bytes leaves Llama-class models room for
tens of thousands of cached tokens (8B: ~30k tokens at 128 KiB/token; 70B: ~100k at
320 KiB/token). It is a floor for a useful batch, not a throughput target: the capacity model
sizes throughput by adding replicas. Quantized checkpoints keep embeddings in 16 bits, so
0.5 byte per parameter slightly underestimates them; the reserve absorbs that.

Explicit GPU counts are honoured: they fail only when the weights alone cannot fit or the
count exceeds what one node offers; a shortfall against the KV reserve is reported in the
message but does not block (the user may have capped maxModelLen).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kiban.api.v1alpha1 import POWERS_OF_TWO, Dtype, FoundationModelSpec, GpuCount, Quantization
from kiban.config import AcceleratorProfile

GIB = 1024**3
KV_RESERVE_FRACTION = 0.25
RUNTIME_OVERHEAD_GIB_PER_GPU = 1.0

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


def _explicit(
    gpus_per_replica: GpuCount, tensor_parallel_size: GpuCount
) -> tuple[int, int] | None:
    """(gpus, tp) when the user fixed either one; None when both are auto."""
    if isinstance(gpus_per_replica, int) and isinstance(tensor_parallel_size, int):
        return gpus_per_replica, tensor_parallel_size
    if isinstance(gpus_per_replica, int):
        return gpus_per_replica, gpus_per_replica
    if isinstance(tensor_parallel_size, int):
        return tensor_parallel_size, tensor_parallel_size
    return None


def size_gpus(
    *,
    parameters: float | None,
    dtype: Dtype,
    quantization: Quantization,
    profile: AcceleratorProfile,
    gpu_memory_utilization: float,
    gpus_per_replica: GpuCount = "auto",
    tensor_parallel_size: GpuCount = "auto",
) -> GpuSizing:
    """Resolve GPUs per replica and tensor/pipeline parallel degrees for one model on one profile."""
    limit = profile.replica_gpu_limit
    per_gpu = f"{profile.gpu_memory_gib:g} GiB x {gpu_memory_utilization:g}"
    weights = parameters * bytes_per_parameter(dtype, quantization) / GIB if parameters else None
    kv = weights * KV_RESERVE_FRACTION if weights is not None else None

    def result(gpus: int, tp: int, fits: bool, reason: SizingReason, message: str) -> GpuSizing:
        return GpuSizing(
            gpus_per_replica=gpus,
            tensor_parallel_size=tp,
            pipeline_parallel_size=gpus // tp,
            fits=fits,
            reason=reason,
            message=message,
            usable_gib=round(usable_gib(gpus, profile.gpu_memory_gib, gpu_memory_utilization), 2),
            weights_gib=None if weights is None else round(weights, 2),
            kv_reserve_gib=None if kv is None else round(kv, 2),
            required_gib=None if weights is None else round(required_gib(weights, gpus), 2),
        )

    explicit = _explicit(gpus_per_replica, tensor_parallel_size)
    if explicit is not None:
        gpus, tp = explicit
        if gpus > limit:
            return result(
                gpus, tp, False, SizingReason.exceeds_node_gpus,
                f"{gpus} GPUs per replica exceeds the {limit} one replica of {profile.name} can get",
            )
        if weights is None:
            return result(gpus, tp, True, SizingReason.user_specified, f"{gpus} GPUs per replica as specified")
        usable = usable_gib(gpus, profile.gpu_memory_gib, gpu_memory_utilization)
        floor = weights + RUNTIME_OVERHEAD_GIB_PER_GPU * gpus
        if floor > usable:
            return result(
                gpus, tp, False, SizingReason.model_does_not_fit,
                f"weights {weights:.1f} GiB + overhead exceed {usable:.1f} GiB usable on {gpus} x {per_gpu}",
            )
        short = "" if required_gib(weights, gpus) <= usable else f"; below the {kv:.1f} GiB KV-cache reserve"
        return result(
            gpus, tp, True, SizingReason.user_specified,
            f"{gpus} GPUs per replica as specified: weights {weights:.1f} GiB of {usable:.1f} GiB usable{short}",
        )

    if weights is None:
        return result(1, 1, True, SizingReason.parameters_unknown, "spec.model.parameters unset: 1 GPU per replica")

    candidates = [g for g in POWERS_OF_TWO if g <= limit]
    for gpus in candidates:
        usable = usable_gib(gpus, profile.gpu_memory_gib, gpu_memory_utilization)
        need = required_gib(weights, gpus)
        if need <= usable:
            return result(
                gpus, gpus, True, SizingReason.auto_sized,
                f"{gpus} x {per_gpu} = {usable:.1f} GiB holds weights {weights:.1f} GiB "
                f"+ KV reserve {kv:.1f} GiB + overhead {RUNTIME_OVERHEAD_GIB_PER_GPU * gpus:.0f} GiB",
            )
    largest = candidates[-1]
    usable = usable_gib(largest, profile.gpu_memory_gib, gpu_memory_utilization)
    return result(
        largest, largest, False, SizingReason.model_does_not_fit,
        f"needs {required_gib(weights, largest):.1f} GiB (weights {weights:.1f} + KV reserve {kv:.1f} "
        f"+ overhead) but {largest} x {per_gpu} = {usable:.1f} GiB is the most one replica of "
        f"{profile.name} can get",
    )


def resolve_sizing(spec: FoundationModelSpec, profile: AcceleratorProfile) -> GpuSizing:
    """size_gpus for a FoundationModel spec on its accelerator profile."""
    return size_gpus(
        parameters=spec.model.parameter_count,
        dtype=spec.model.dtype,
        quantization=spec.model.quantization,
        profile=profile,
        gpu_memory_utilization=spec.engine.gpu_memory_utilization,
        gpus_per_replica=spec.accelerator.gpus_per_replica,
        tensor_parallel_size=spec.accelerator.tensor_parallel_size,
    )
