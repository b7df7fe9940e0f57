"""Candidate models x candidate accelerators for one load and SLO: what each pair costs (pure).

For each (model, accelerator) pair:
  1. GPUs per replica from the operator's own sizing (kiban.sizing.gpu.size_gpus: weights at
     the model's dtype/quantization, KV reserve, overhead, powers of two up to one node);
  2. an engine profile for that model on that many GPUs, derived as kiban.capacity.profiles
     derives the catalogue (datasheet bandwidth and FLOPS, measured MBU and per-sequence cost),
     from the stated parameter count and bytes per parameter, with the KV geometry of the
     nearest Llama 3.x architecture (`derive_profile_for`);
  3. replicas from the capacity model the autoscaler uses (kiban.capacity.batching:
     max_arrival_rate at the SLO and the target utilisation, then replicas_needed);
  4. GPU-hours per day, cost per day, cost per million output tokens at the load's rate.
A pair that cannot serve says why: the weights do not fit, there is no profile for the GPU,
the mean request does not fit the KV cache, or the SLO is missed even by a lone request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiban.api.v1alpha1 import Dtype, Quantization
from kiban.capacity.batching import (PRECISE_RATE_SEARCH_STEPS, PromptMix, Slo, max_arrival_rate, predict,
                                     replicas_needed)
from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.profiles import GPUS, derive_profile_for
from kiban.config import AcceleratorProfile
from kiban.sizing.gpu import bytes_per_parameter, size_gpus

HOURS_PER_DAY = 24.0
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class ModelCandidate:
    name: str
    params_b: float
    dtype: Dtype = Dtype.auto
    quantization: Quantization = Quantization.none

    @property
    def bytes_per_parameter(self) -> float:
        return bytes_per_parameter(self.dtype, self.quantization)

    def describe(self) -> str:
        precision = self.quantization.value if self.quantization != Quantization.none else (
            "bf16" if self.dtype == Dtype.auto else self.dtype.value)
        return f"{self.name} ({self.params_b:g}B {precision})"


@dataclass(frozen=True)
class AcceleratorCandidate:
    profile: AcceleratorProfile
    price_per_gpu_hour: float


@dataclass(frozen=True)
class Load:
    """Requests per second with the mean token counts and, optionally, the prompt-length shape."""

    rate_rps: float
    prompt_tokens: float
    output_tokens: float
    prompt_mix: PromptMix | None = None
    peak_factor: float = 1.0


@dataclass(frozen=True)
class PairResult:
    model: str
    accelerator: str
    feasible: bool
    reason: str
    gpus_per_replica: int | None = None
    capacity_per_replica_rps: float | None = None
    replicas: int | None = None
    gpus: int | None = None
    gpu_hours_per_day: float | None = None
    cost_per_day: float | None = None
    cost_per_million_output_tokens: float | None = None
    predicted_ttft_p95_ms: float | None = None
    predicted_itl_p95_ms: float | None = None
    engine_profile: EngineProfile | None = None


def compare_pair(model: ModelCandidate, accelerator: AcceleratorCandidate, load: Load, slo: Slo,
                 target_utilization: float = 0.75, gpu_memory_utilization: float = 0.9) -> PairResult:
    """One pair: sizing, engine profile, replicas at the SLO, cost (see module doc)."""
    name, gpu = model.describe(), accelerator.profile.name

    def cannot(reason: str, **extra) -> PairResult:
        return PairResult(name, gpu, False, reason, **extra)

    sizing = size_gpus(parameters=model.params_b * 1e9, dtype=model.dtype, quantization=model.quantization,
                       profile=accelerator.profile, gpu_memory_utilization=gpu_memory_utilization)
    if not sizing.fits:
        return cannot(f"{sizing.reason}: {sizing.message}")
    if gpu not in GPUS:
        return cannot(f"no engine profile (datasheet figures) for accelerator {gpu!r}; profiles exist for "
                      f"{', '.join(sorted(GPUS))}", gpus_per_replica=sizing.gpus_per_replica)
    try:
        profile = derive_profile_for(gpu, model.params_b, sizing.tensor_parallel_size, model.bytes_per_parameter,
                                     gpu_memory_utilization, pp=sizing.pipeline_parallel_size)
        capacity = max_arrival_rate(profile, load.prompt_tokens, load.output_tokens, slo, target_utilization,
                                    prompt_mix=load.prompt_mix, search_steps=PRECISE_RATE_SEARCH_STEPS)
    except ValueError as exc:
        return cannot(str(exc), gpus_per_replica=sizing.gpus_per_replica)
    if capacity <= 0:
        alone = predict(profile, 0.0, load.prompt_tokens, load.output_tokens, prompt_mix=load.prompt_mix)
        return cannot(f"{slo.describe()} is unattainable on {profile.name} even unloaded (a lone request: "
                      f"TTFT p95 {alone.ttft_p95_s * 1e3:.0f} ms, ITL p95 {alone.itl_p95_s * 1e3:.1f} ms)",
                      gpus_per_replica=sizing.gpus_per_replica, engine_profile=profile)
    replicas = replicas_needed(load.rate_rps, load.peak_factor, capacity, min_replicas=1)
    gpus = replicas * sizing.gpus_per_replica
    gpu_hours = gpus * HOURS_PER_DAY
    cost = gpu_hours * accelerator.price_per_gpu_hour
    tokens_per_day = load.rate_rps * load.output_tokens * SECONDS_PER_DAY
    prediction = predict(profile, load.rate_rps * load.peak_factor / replicas, load.prompt_tokens,
                         load.output_tokens, prompt_mix=load.prompt_mix)

    def ms(seconds: float) -> float | None:
        return round(seconds * 1e3, 1) if math.isfinite(seconds) else None

    return PairResult(
        name, gpu, True,
        f"{replicas} x {sizing.gpus_per_replica} GPU: one replica takes {capacity:.3g} req/s at {slo.describe()} "
        f"and {target_utilization:g} utilisation",
        gpus_per_replica=sizing.gpus_per_replica, capacity_per_replica_rps=capacity, replicas=replicas, gpus=gpus,
        gpu_hours_per_day=gpu_hours, cost_per_day=cost,
        cost_per_million_output_tokens=cost / (tokens_per_day / 1e6) if tokens_per_day > 0 else None,
        predicted_ttft_p95_ms=ms(prediction.ttft_p95_s), predicted_itl_p95_ms=ms(prediction.itl_p95_s),
        engine_profile=profile,
    )


def compare(models: list[ModelCandidate], accelerators: list[AcceleratorCandidate], load: Load, slo: Slo,
            target_utilization: float = 0.75, gpu_memory_utilization: float = 0.9) -> list[PairResult]:
    """Every pair, cheapest feasible first (by cost per day), then the infeasible ones."""
    results = [compare_pair(m, a, load, slo, target_utilization, gpu_memory_utilization)
               for m in models for a in accelerators]
    return sorted(results, key=lambda r: (not r.feasible, r.cost_per_day if r.feasible else 0.0))


# -- loads from a request mix or an Azure-format trace -------------------------------------------------


def load_from_mix(rate_rps: float, mix: list[tuple[float, float, float]], peak_factor: float = 1.0) -> Load:
    """`mix`: (prompt tokens, output tokens, weight) classes -> the weighted means and prompt shape."""
    if not mix:
        raise ValueError("the request mix needs at least one PROMPT:OUTPUT[:WEIGHT] class")
    total = sum(w for _, _, w in mix)
    if not total > 0 or any(w < 0 or p < 0 or o < 1 for p, o, w in mix):
        raise ValueError(f"mix classes need prompt >= 0, output >= 1 and weights >= 0 with a positive sum, got {mix}")
    prompt = sum(p * w for p, _, w in mix) / total
    output = sum(o * w for _, o, w in mix) / total
    shape = tuple((p, w / total) for p, _, w in mix) if len(mix) > 1 else None
    return Load(rate_rps, prompt, output, shape, peak_factor)


def load_from_requests(arrivals_s: list[float], prompt_tokens: list[int], output_tokens: list[int],
                       peak_factor: float = 1.0, bins: int = 8) -> Load:
    """A trace's mean rate and token means, its prompt lengths as a `bins`-quantile shape."""
    if len(arrivals_s) < 2:
        raise ValueError("a trace needs at least two requests to have a rate")
    span = max(arrivals_s) - min(arrivals_s)
    if span <= 0:
        raise ValueError("the trace's requests all arrive at the same instant")
    rate = (len(arrivals_s) - 1) / span
    ordered = sorted(prompt_tokens)
    shape = []
    for b in range(bins):
        chunk = ordered[b * len(ordered) // bins:(b + 1) * len(ordered) // bins]
        if chunk:
            shape.append((sum(chunk) / len(chunk), len(chunk) / len(ordered)))
    return Load(rate, sum(prompt_tokens) / len(prompt_tokens), max(1.0, sum(output_tokens) / len(output_tokens)),
                tuple(shape), peak_factor)
