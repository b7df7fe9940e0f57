"""Histogram maths and the workload estimate from Prometheus-shaped numbers (the engine fit:
test_capacity_online_fit.py)."""

from __future__ import annotations

import math

import pytest

from kiban.capacity.fitting import (
    HistogramWindow,
    estimate_workload,
    histogram_delta,
    histogram_mean,
    histogram_quantile,
    rate_per_s,
)


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
