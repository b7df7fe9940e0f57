"""A "true" engine that is not the datasheet: the away game's hidden GPU.

The engine profiles in kiban.capacity.profiles are derived from datasheets and a few public
measurements; a real GPU, driver, kernel set and model build differ from them. To test an
autoscaler that must learn its engine rather than be told it, a run draws a true profile:
each step-time parameter (alpha, beta, gamma, delta) and the KV capacity is the datasheet
value times an independent log-uniform factor in [0.7, 1.4], seeded. The benchmark's fleet
runs it, and `kiban-sim --true-engine-seed N` serves it, so the operator's online fit can be
checked against a real process. Pure: a seed in, a profile out.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from kiban.capacity.engine_profile import EngineProfile

FACTOR_LOW, FACTOR_HIGH = 0.7, 1.4  # the range each true parameter lies in, as a multiple of the datasheet's
PERTURBED_FIELDS = ("alpha_ms", "beta_ms", "gamma_ms", "delta_ms", "kv_cache_tokens")
COLD_START_RANGE_S = (60.0, 300.0)  # scheduling + image + weights + compile, creation to Ready


def true_factors(seed: int, low: float = FACTOR_LOW, high: float = FACTOR_HIGH) -> dict[str, float]:
    """One independent log-uniform factor in [low, high] per perturbed field, from the seed."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got {low!r}, {high!r}")
    rng = random.Random(f"kiban-true-engine-{seed}")
    return {name: math.exp(rng.uniform(math.log(low), math.log(high))) for name in PERTURBED_FIELDS}


def perturbed_profile(profile: EngineProfile, seed: int, low: float = FACTOR_LOW,
                      high: float = FACTOR_HIGH) -> EngineProfile:
    """The datasheet profile with each step-time parameter and the KV capacity scaled by its
    seeded factor; everything else (batch limit, start-up estimate) is the datasheet's."""
    factors = true_factors(seed, low, high)
    changed = {name: getattr(profile, name) * factors[name] for name in PERTURBED_FIELDS}
    changed["kv_cache_tokens"] = max(1, int(round(changed["kv_cache_tokens"])))
    note = ", ".join(f"{name} x{factors[name]:.3f}" for name in PERTURBED_FIELDS)
    return replace(profile, **changed, source=f"{profile.source} True engine of seed {seed}: {note}.")


def true_cold_start_s(seed: int, low_s: float = COLD_START_RANGE_S[0], high_s: float = COLD_START_RANGE_S[1]) -> float:
    """The run's true creation-to-Ready time, uniform in [low_s, high_s], from the seed."""
    if not 0 <= low_s <= high_s:
        raise ValueError(f"need 0 <= low_s <= high_s, got {low_s!r}, {high_s!r}")
    return random.Random(f"kiban-true-cold-start-{seed}").uniform(low_s, high_s)
