"""Fitting the workload and the engine profile from Prometheus-shaped numbers."""

from __future__ import annotations

import math
import random

import pytest

from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.fitting import (
    HistogramWindow,
    estimate_workload,
    fit_line,
    fit_profile,
    histogram_delta,
    histogram_mean,
    histogram_quantile,
    rate_per_s,
)

PRIOR = EngineProfile(name="test/8B", gpu="test-gpu", model_params_b=8.0, alpha_ms=10.0, beta_ms=0.3,
                      gamma_ms=10.0, delta_ms=0.05, max_num_seqs=64, kv_cache_tokens=200_000,
                      startup_s=120.0, source="unit test")


def window(counts: list[float], total: float) -> HistogramWindow:
    bounds = [100.0, 500.0, 1000.0, math.inf]
    return HistogramWindow(buckets=tuple(zip(bounds, counts)), sum=total, count=counts[-1])


def test_delta_mean_and_rate_from_two_scrapes():
    earlier = window([10, 40, 90, 100], 50_000)
    later = window([30, 100, 250, 280], 170_000)
    delta = histogram_delta(later, earlier)
    assert delta.count == 180 and delta.sum == 120_000
    assert delta.buckets[0] == (100.0, 20)
    assert histogram_mean(delta) == pytest.approx(666.667, abs=1e-3)
    assert rate_per_s(delta.count, 60.0) == pytest.approx(3.0)


def test_counter_reset_is_an_error_not_a_negative_rate():
    with pytest.raises(ValueError, match="reset"):
        histogram_delta(window([1, 2, 3, 4], 100), window([10, 40, 90, 100], 50_000))


def test_empty_window_has_no_mean():
    assert histogram_mean(window([0, 0, 0, 0], 0)) is None
    assert histogram_quantile(window([0, 0, 0, 0], 0), 0.95) is None


def test_quantile_interpolates_like_prometheus():
    h = window([0, 50, 100, 100], 0)
    assert histogram_quantile(h, 0.5) == pytest.approx(500.0)  # top of the second bucket
    assert histogram_quantile(h, 0.25) == pytest.approx(300.0)  # halfway through 100..500
    assert histogram_quantile(window([0, 0, 50, 100], 0), 0.99) == pytest.approx(1000.0)  # +Inf: last bound


def test_estimate_workload_uses_token_histograms():
    prompt = window([0, 10, 30, 30], 18_000)
    output = window([20, 30, 30, 30], 3_000)
    estimate = estimate_workload(prompt, output, window_s=15.0)
    assert estimate.arrival_rate_rps == pytest.approx(2.0)
    assert estimate.mean_prompt_tokens == pytest.approx(600.0)
    assert estimate.mean_output_tokens == pytest.approx(100.0)


def test_fit_line_recovers_a_noiseless_line():
    fit = fit_line([(x, 3.0 + 0.5 * x) for x in range(1, 20)])
    assert fit.intercept == pytest.approx(3.0) and fit.slope == pytest.approx(0.5)
    assert fit.r_squared == pytest.approx(1.0) and fit.samples == 19


def test_fit_line_without_spread_in_x_has_no_slope():
    fit = fit_line([(4.0, 10.0), (4.0, 12.0)])
    assert fit.slope is None and fit.intercept == pytest.approx(11.0) and fit.r_squared == 0.0


def test_many_clean_samples_replace_the_prior():
    rng = random.Random(7)
    decode = [(b, 14.0 + 0.8 * b + rng.gauss(0, 0.05)) for b in rng.choices(range(1, 60), k=2000)]
    prefill = [(t, 25.0 + 0.12 * t + rng.gauss(0, 0.5)) for t in rng.choices(range(100, 8000), k=2000)]
    result = fit_profile(PRIOR, decode, prefill, prior_samples=50)
    assert result.profile.alpha_ms == pytest.approx(14.0, rel=0.05)
    assert result.profile.beta_ms == pytest.approx(0.8, rel=0.05)
    assert result.profile.gamma_ms == pytest.approx(25.0, rel=0.05)
    assert result.profile.delta_ms == pytest.approx(0.12, rel=0.05)
    assert result.confidence > 0.9
    assert result.profile.max_num_seqs == PRIOR.max_num_seqs  # untouched fields kept
    again = fit_profile(result.profile, decode, prefill)
    assert again.profile.source.count("Re-fitted") == 1


def test_few_samples_barely_move_the_prior():
    result = fit_profile(PRIOR, [(1, 100.0), (2, 200.0)], prior_samples=50)
    assert result.profile.alpha_ms < 20.0  # 2 / 52 of the way to a wild fit
    assert result.confidence < 0.05
    assert result.profile.gamma_ms == PRIOR.gamma_ms and result.prefill_fit is None


def test_no_samples_is_the_prior_with_zero_confidence():
    result = fit_profile(PRIOR)
    assert (result.profile.alpha_ms, result.profile.beta_ms) == (PRIOR.alpha_ms, PRIOR.beta_ms)
    assert result.confidence == 0.0


def test_fitted_values_stay_physical():
    # noise that fits a negative slope must not give a negative beta
    result = fit_profile(PRIOR, [(b, 20.0 - 0.5 * b) for b in range(1, 30)], prior_samples=1)
    assert result.profile.beta_ms >= 0.0 and result.profile.alpha_ms > 0.0
