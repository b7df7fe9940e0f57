"""Online learning of the engine (kiban.capacity.fitting): step times from vLLM's per-engine
counters with the datasheet as prior, and the cold start from the model's pods. Expected
values come from the simulator's engine run on a known true profile, never from the fit."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from kiban.capacity.fitting import (
    EngineEvidence,
    EngineWindow,
    PodStart,
    StartupMemory,
    add_evidence,
    estimate_startup,
    fit_engine,
    remember_starts,
)
from kiban.capacity.profiles import get_profile_by_name
from kiban_serving.sim.engine import Engine

PRIOR = get_profile_by_name("nvidia-a100-80gb/8B")
TRUE = replace(PRIOR, alpha_ms=PRIOR.alpha_ms * 1.3, beta_ms=PRIOR.beta_ms * 0.8, gamma_ms=PRIOR.gamma_ms * 0.9,
               delta_ms=PRIOR.delta_ms * 0.75)


def engine_windows(rate_rps: float, seconds: float, window_s: float, seed: int) -> list[EngineWindow]:
    """Poisson load on one engine of the TRUE profile, read as vLLM's counters per window."""
    rng = np.random.default_rng(seed)
    engine = Engine(TRUE)
    t, i, windows = 0.0, 0, []
    itl_sum = itl_count = prefill_sum = prefill_count = prompt_sum = 0.0
    last = None
    edge = window_s
    while edge <= seconds:
        while t < edge:
            engine.submit(str(i), int(rng.integers(200, 2500)), int(rng.integers(20, 300)), t)
            i += 1
            t += rng.exponential(1.0 / rate_rps)
        for done in engine.advance_to(edge):
            if done.output_tokens > 1:
                itl_sum += done.decode_s
                itl_count += done.output_tokens - 1
            prefill_sum += done.prefill_s
            prefill_count += 1
            prompt_sum += done.prompt_tokens
        now = (engine.num_running, itl_sum, itl_count, engine.num_steps, engine.prompt_tokens_total,
               prefill_sum, prefill_count, prompt_sum)
        if last is not None:
            d = [a - b for a, b in zip(now, last)]
            windows.append(EngineWindow(0.5 * (now[0] + last[0]), d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[6]))
        last = now
        edge += window_s
    return windows


def test_no_evidence_gives_the_prior_with_its_uncertainty() -> None:
    fit = fit_engine(PRIOR, EngineEvidence())
    for name in ("alpha_ms", "beta_ms", "gamma_ms", "delta_ms"):
        assert getattr(fit.profile, name) == pytest.approx(getattr(PRIOR, name))
    assert fit.relative_sd("delta_ms") == pytest.approx(0.25)


def test_evidence_from_a_true_engine_moves_the_fit_toward_it() -> None:
    evidence = EngineEvidence()
    for k, rate in enumerate((1.0, 3.0, 6.0)):  # loads that vary the batch
        evidence = add_evidence(evidence, engine_windows(rate, 600.0, 15.0, seed=k), now_s=600.0 * (k + 1))
    fit = fit_engine(PRIOR, evidence)
    for name in ("alpha_ms", "delta_ms"):  # the step time's level and the prefill cost are identified
        prior_error = abs(getattr(PRIOR, name) / getattr(TRUE, name) - 1)
        fit_error = abs(getattr(fit.profile, name) / getattr(TRUE, name) - 1)
        assert fit_error < 0.5 * prior_error, (name, fit_error, prior_error)
    assert fit.relative_sd("delta_ms") < 0.1  # evidence overrides the prior


def test_a_window_of_a_few_requests_barely_moves_the_prior() -> None:
    few = EngineWindow(mean_running=1.0, itl_sum_s=0.05, itl_count=2, steps=3, prompt_tokens=1000,
                       prefill_sum_s=1.0, prefill_count=1, request_prompt_sum=1000, request_prompt_count=1)
    fit = fit_engine(PRIOR, add_evidence(EngineEvidence(), [few], now_s=15.0))
    for name in ("alpha_ms", "beta_ms", "gamma_ms", "delta_ms"):
        assert abs(getattr(fit.profile, name) / getattr(PRIOR, name) - 1) < 0.35, name


def test_evidence_fades_so_the_fit_follows_a_drifting_engine() -> None:
    evidence = add_evidence(EngineEvidence(), engine_windows(4.0, 300.0, 15.0, seed=1), now_s=300.0)
    later = add_evidence(evidence, [], now_s=300.0 + 5 * 1800.0)
    assert np.max(np.abs(later.information)) < 0.01 * np.max(np.abs(evidence.information))


def test_cold_start_is_the_slowest_recent_pod_of_the_revision() -> None:
    pods = [PodStart("a", 0.0, 150.0), PodStart("a", 10.0, 180.0), PodStart("b", 500.0, 560.0)]
    memory = remember_starts(StartupMemory(), pods)
    assert estimate_startup(memory, pods, prior_s=47.0, now_s=600.0, revision="a").value_s == 170.0
    assert estimate_startup(memory, pods, prior_s=47.0, now_s=600.0, revision="b").value_s == 60.0
    again = remember_starts(memory, pods)  # the same pods are counted once
    assert len(again.durations) == 3


def test_a_pod_still_starting_raises_a_prior_that_is_too_short() -> None:
    pods = [PodStart("a", 100.0, None)]
    memory = remember_starts(StartupMemory(), pods)
    assert estimate_startup(memory, pods, prior_s=47.0, now_s=120.0).value_s == 47.0
    late = estimate_startup(memory, pods, prior_s=47.0, now_s=260.0)
    assert late.value_s == 160.0 and late.samples == 0


def test_without_any_pod_the_prior_holds() -> None:
    estimate = estimate_startup(StartupMemory(), [], prior_s=47.0, now_s=0.0)
    assert estimate.value_s == 47.0 and estimate.revision is None and math.isfinite(estimate.prior_s)
