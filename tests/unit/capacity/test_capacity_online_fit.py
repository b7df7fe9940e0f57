"""Online learning of the engine (kiban.capacity.fitting, through kiban.autoscale.learning as the
operator runs it): step times from what vLLM 0.33 exports per engine, with the datasheet as prior.

Expected values come from the simulator's engine (kiban_serving.sim.engine) running a seeded true
engine (kiban_serving.sim.true_engine) that the fit is not told, replayed in simulated time and
read as vLLM's counters per 15 s scrape (kiban_dev.benchmark.engine_fit). The seeds and the trace
half here (5-6, second half) were not used to design the observation model (seeds 0-4, first half).
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import numpy as np
import pytest

from kiban.capacity.fitting import (
    FIT_FIELDS,
    EngineEvidence,
    EngineWindow,
    add_evidence,
    chunks_per_prompt,
    engine_rows,
    fit_engine,
)
from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.benchmark import engine_fit

PRIOR = get_profile_by_name("nvidia-a100-80gb/8B")
HELD_OUT_SEEDS = (5, 6)
CASES = [(p, m, s) for p in engine_fit.PROFILES for m in engine_fit.MIXES for s in HELD_OUT_SEEDS]


@functools.lru_cache(maxsize=None)
def case(profile: str, mix: str, seed: int) -> engine_fit.FitCase:
    return engine_fit.run_case(profile, mix, seed, minutes=20.0, half=1)


def test_no_evidence_gives_the_prior_with_its_uncertainty() -> None:
    fit = fit_engine(PRIOR, EngineEvidence())
    for name in FIT_FIELDS:
        assert getattr(fit.profile, name) == pytest.approx(getattr(PRIOR, name))
    assert fit.relative_sd("delta_ms") == pytest.approx(0.25)


@pytest.mark.parametrize(("profile", "mix", "seed"), CASES)
def test_the_fit_learns_a_true_engine_it_was_not_told(profile: str, mix: str, seed: int) -> None:
    """The decode step's level and the prefill cost per token, the parameters every load
    exercises, come within 25 % and 12 % of the true engine's, and their sd shrinks below the
    prior's; the prior was up to 30 % off (a log-uniform factor in [0.7, 1.4])."""
    got = case(profile, mix, seed)
    assert abs(got.error("alpha_ms")) <= 0.25, got
    assert abs(got.error("delta_ms")) <= 0.12, got
    assert abs(got.error("beta_ms")) <= 0.5, got
    for name in ("alpha_ms", "delta_ms"):
        assert got.sd[name] / getattr(got.learned, name) < 0.25


def test_the_fit_beats_the_datasheet_on_the_parameters_the_load_exercises() -> None:
    """Over the held-out cases, the mean error of alpha and delta is at most half the prior's."""
    for name in ("alpha_ms", "delta_ms"):
        prior = np.mean([abs(case(*c).error(name, "prior")) for c in CASES])
        learned = np.mean([abs(case(*c).error(name)) for c in CASES])
        assert learned <= 0.5 * prior, (name, learned, prior)


@pytest.mark.parametrize(("profile", "mix"), [("nvidia-a100-80gb/8B", "conv"), ("nvidia-a100-80gb/8B", "code"),
                                              ("nvidia-l4/8B", "conv")])
def test_capacity_per_replica_at_the_slo_follows_the_true_engine(profile: str, mix: str) -> None:
    """What the autoscaler sizes with: capacity per replica at TTFT p99 <= 2 s for the mix, with
    the learned engine, within 15 % of the true engine's, where the datasheet's was further off.
    (L4 with code prompts sits at the edge of attainability at 2 s, where capacity is a cliff:
    its parameters are checked above, its capacity is reported by make bench-fit.)"""
    got = case(profile, mix, HELD_OUT_SEEDS[0])
    pairs = [(p, o) for p, o in engine_fit.trace_pairs(mix, 1) if p + o <= got.true.kv_cache_tokens // 2]
    true = engine_fit.capacity_rps(got.true, pairs)
    learned = engine_fit.capacity_rps(got.learned, pairs)
    prior = engine_fit.capacity_rps(got.prior, pairs)
    assert true > 0
    assert abs(learned / true - 1) <= 0.15, (learned, true, prior)
    assert abs(learned / true - 1) <= abs(prior / true - 1)


def test_a_prefill_step_that_costs_more_than_a_decode_is_fitted_in_its_regime() -> None:
    """A true engine whose steps with prefill pay gamma = 1.8 alpha (the datasheet says gamma =
    alpha): the fit picks the gamma >= alpha regime, so steps mixing prefill and decodes pay
    gamma in the capacity model. gamma is a small part of a prefill step (delta x the prompt
    dominates), so it moves little: no further from the truth than the prior, its sd still wide."""
    prior = get_profile_by_name("nvidia-a100-80gb/8B")
    true = replace(prior, alpha_ms=prior.alpha_ms * 0.8, gamma_ms=prior.gamma_ms * 1.45)
    pairs = [(p, o) for p, o in engine_fit.trace_pairs("conv", 1)]
    requests = engine_fit.workload(pairs, engine_fit.capacity_rps(prior, pairs), 1200.0, seed=11)
    evidence = EngineEvidence()
    for time_s, window, mix in engine_fit.windows_of(engine_fit.replay(true, requests, 1200.0)):
        evidence = add_evidence(evidence, [window], time_s, prompt_mix=mix)
    fit = fit_engine(prior, evidence)
    assert fit.regime == "gamma>=alpha"
    assert abs(fit.profile.gamma_ms / true.gamma_ms - 1) <= abs(prior.gamma_ms / true.gamma_ms - 1)
    assert abs(fit.profile.alpha_ms / true.alpha_ms - 1) < 0.1
    assert fit.relative_sd("gamma_ms") > 0.1 > fit.relative_sd("alpha_ms")


def test_a_window_of_a_few_requests_barely_moves_the_prior() -> None:
    few = EngineWindow(mean_running=1.0, itl_sum_s=0.05, itl_count=2, steps=3, prompt_tokens=1000,
                       prefill_sum_s=1.0, prefill_count=1, request_prompt_sum=1000, request_prompt_count=1,
                       first_tokens=1, queue_sum_s=0.0, window_s=15.0)
    fit = fit_engine(PRIOR, add_evidence(EngineEvidence(), [few], now_s=15.0))
    for name in FIT_FIELDS:
        assert abs(getattr(fit.profile, name) / getattr(PRIOR, name) - 1) < 0.35, name


def test_overlapping_windows_count_for_their_new_share() -> None:
    window = EngineWindow(mean_running=5.0, itl_sum_s=10.0, itl_count=800, steps=200, prompt_tokens=50_000,
                          prefill_sum_s=8.0, prefill_count=40, request_prompt_sum=50_000, request_prompt_count=40,
                          first_tokens=40, queue_sum_s=0.2, window_s=60.0)
    whole = add_evidence(EngineEvidence(), [window], now_s=60.0)
    quarter = add_evidence(EngineEvidence(), [window], now_s=60.0, weight=0.25)
    assert np.allclose(np.array(quarter.information) * 4, np.array(whole.information))


def test_evidence_fades_so_the_fit_follows_a_drifting_engine() -> None:
    got = case(*CASES[0])
    pairs = engine_fit.trace_pairs("conv", 1)
    requests = engine_fit.workload(pairs, 3.0, 300.0, seed=1)
    evidence = EngineEvidence()
    for time_s, window, mix in engine_fit.windows_of(engine_fit.replay(got.true, requests, 300.0)):
        evidence = add_evidence(evidence, [window], time_s, prompt_mix=mix)
    later = add_evidence(evidence, [], now_s=300.0 + 5 * 1800.0)
    assert np.max(np.abs(later.information)) < 0.01 * np.max(np.abs(evidence.information))


def test_steps_per_prompt_over_the_prompt_law() -> None:
    """E[max(1, ceil(p / b))]: from a mix exactly; without one, for an exponential law of the mean,
    against a Monte-Carlo draw."""
    assert chunks_per_prompt(2750.0, 2048.0, ((500.0, 0.5), (5000.0, 0.5))) == pytest.approx(0.5 * 1 + 0.5 * 3)
    assert chunks_per_prompt(1375.0, 2048.0, ((500.0, 0.5), (5000.0, 0.5))) == pytest.approx(0.5 * 1 + 0.5 * 2)  # rescaled
    draws = np.random.default_rng(0).exponential(1500.0, 200_000)
    expected = np.maximum(1, np.ceil(draws / 2048.0)).mean()
    assert chunks_per_prompt(1500.0, 2048.0) == pytest.approx(expected, rel=0.01)


def test_rows_need_what_they_measure() -> None:
    """No decode in the window: no ITL row; no request finished: no prefill row; never a NaN."""
    idle = EngineWindow(mean_running=0.0, itl_sum_s=0.0, itl_count=0, steps=0, prompt_tokens=0, prefill_sum_s=0.0,
                        prefill_count=0, request_prompt_sum=0, request_prompt_count=0, window_s=15.0)
    assert engine_rows(idle) == []
    only_prefill = replace(idle, steps=2, prompt_tokens=3000, prefill_sum_s=0.4, prefill_count=2,
                           request_prompt_sum=3000, request_prompt_count=2, first_tokens=2, queue_sum_s=0.0)
    rows = engine_rows(only_prefill)
    assert [r.kind for r in rows] == ["prefill"]
    assert all(math.isfinite(v) for r in rows for f in r.features for v in f)
