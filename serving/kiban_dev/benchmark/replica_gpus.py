"""GPUs one replica of an engine profile occupies, as the operator sizes it (kiban.sizing).

The benchmark bills GPU-hours as replica-seconds x GPUs per replica; a replica's GPUs are what
the operator would give that model on that accelerator (a multi-node replica: every GPU of its
LeaderWorkerSet group), never a number of the benchmark's own.
"""

from __future__ import annotations

from kiban.api.v1alpha1 import Dtype, Quantization
from kiban.capacity.engine_profile import EngineProfile
from kiban.config import BUILTIN_PROFILES
from kiban.sizing import size_gpus

GPU_MEMORY_UTILIZATION = 0.9  # the FoundationModel default (spec.engine.gpuMemoryUtilization)


def operator_gpus_per_replica(profile: EngineProfile) -> int:
    """kiban.sizing for the profile's model (its nominal size, bf16) on its accelerator profile."""
    accelerators = {p.name: p for p in BUILTIN_PROFILES}
    if profile.gpu not in accelerators:
        raise KeyError(f"engine profile {profile.name!r}: no accelerator profile {profile.gpu!r}")
    sizing = size_gpus(parameters=profile.model_params_b * 1e9, dtype=Dtype.bfloat16, quantization=Quantization.none,
                       profile=accelerators[profile.gpu], gpu_memory_utilization=GPU_MEMORY_UTILIZATION)
    if not sizing.fits:
        raise ValueError(f"engine profile {profile.name!r}: {sizing.message}")
    return sizing.gpus_per_replica
