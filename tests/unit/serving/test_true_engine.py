"""The away game's true engine: seeded, within [0.7, 1.4] x the datasheet per field, independent."""

from __future__ import annotations

import math

import pytest

from kiban.capacity.profiles import get_profile_by_name
from kiban_serving.sim.server import build_parser, config_from_args
from kiban_serving.sim.true_engine import (
    PERTURBED_FIELDS,
    perturbed_profile,
    true_cold_start_s,
    true_factors,
)

PRIOR = get_profile_by_name("nvidia-a100-80gb/8B")


def test_factors_are_seeded_within_the_range_and_differ_by_field_and_seed() -> None:
    draws = [true_factors(seed) for seed in range(200)]
    assert true_factors(7) == true_factors(7)
    values = [f[name] for f in draws for name in PERTURBED_FIELDS]
    assert all(0.7 <= v <= 1.4 for v in values)
    # log-uniform: the log of the factor is uniform, so about half lie below the geometric middle
    middle = math.sqrt(0.7 * 1.4)
    below = sum(v < middle for v in values) / len(values)
    assert 0.45 < below < 0.55
    assert len({round(draws[0][n], 9) for n in PERTURBED_FIELDS}) == len(PERTURBED_FIELDS)
    assert draws[0] != draws[1]


def test_perturbed_profile_scales_each_field_and_keeps_the_rest() -> None:
    true = perturbed_profile(PRIOR, 3)
    factors = true_factors(3)
    for name in ("alpha_ms", "beta_ms", "gamma_ms", "delta_ms"):
        assert getattr(true, name) == pytest.approx(getattr(PRIOR, name) * factors[name])
    assert true.kv_cache_tokens == round(PRIOR.kv_cache_tokens * factors["kv_cache_tokens"])
    assert (true.max_num_seqs, true.startup_s, true.name) == (PRIOR.max_num_seqs, PRIOR.startup_s, PRIOR.name)
    assert "seed 3" in true.source


def test_cold_start_is_drawn_from_60_to_300_s() -> None:
    draws = [true_cold_start_s(seed) for seed in range(100)]
    assert all(60.0 <= d <= 300.0 for d in draws)
    assert max(draws) - min(draws) > 150  # spread over the range, not a constant
    assert true_cold_start_s(4) == true_cold_start_s(4)


def test_kiban_sim_serves_the_true_engine_with_the_flag() -> None:
    args = build_parser().parse_args(["--served-model-name", "m", "--profile", PRIOR.name, "--true-engine-seed", "3"])
    assert config_from_args(args).profile == perturbed_profile(PRIOR, 3)
    plain = build_parser().parse_args(["--served-model-name", "m", "--profile", PRIOR.name])
    assert config_from_args(plain).profile == PRIOR
