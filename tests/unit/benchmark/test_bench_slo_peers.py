"""llm-d's SLO-aware law and Dynamo's throughput planner, as reference/peers.md describes them,
one observation at a time."""

from __future__ import annotations

import math

import pytest

from kiban.capacity.batching import Slo, max_arrival_rate
from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.benchmark.observe import TTFT_BUCKETS_S
from kiban_dev.benchmark.peers import DynamoPlannerPolicy, LlmdSloPolicy, arima_forecast
from test_bench_policies import obs  # the same directory


def with_ttft(o, seconds: float, count: int = 100):
    """The observation with `count` first tokens in the TTFT bucket holding `seconds`."""
    from dataclasses import replace

    deltas = [0] * (len(TTFT_BUCKETS_S) + 1)
    index = next(i for i, bound in enumerate(TTFT_BUCKETS_S) if seconds <= bound)
    deltas[index] = count
    return replace(o, ttft_bucket_deltas=tuple(deltas))


def test_llmd_scales_up_by_its_formula_when_p90_is_over_the_band() -> None:
    policy = LlmdSloPolicy(ttft_target_s=1.0)
    # P90 of a window all in (0.75, 1.0]: 0.975 s, s = 0.975 > 0.55 -> d = n + ceil(n (0.975/0.55 - 1))
    desired = policy.desired_replicas(with_ttft(obs(15, replicas=4), 1.0))
    s = 0.75 + 0.25 * 0.9
    assert desired == 4 + math.ceil(4 * (s / 0.55 - 1))


def test_llmd_up_step_is_limited_to_double_or_four_pods_per_minute() -> None:
    policy = LlmdSloPolicy(ttft_target_s=0.1)  # s capped at 2: d = n + ceil(n (2/0.55 - 1)) = big
    assert policy.desired_replicas(with_ttft(obs(15, replicas=2), 10.0)) == 2 + 4  # max(100 %, 4 pods)
    big = LlmdSloPolicy(ttft_target_s=0.1)
    assert big.desired_replicas(with_ttft(obs(15, replicas=10), 10.0)) == 20


def test_llmd_holds_inside_the_band_and_steps_down_one_pod_per_120_s() -> None:
    policy = LlmdSloPolicy(ttft_target_s=2.0)
    # P90 in (0.75, 1.0] over a 2 s target: s ~ 0.49, inside [0.40, 0.55]
    assert policy.desired_replicas(with_ttft(obs(15, replicas=5), 1.0)) == 5
    idle = LlmdSloPolicy(ttft_target_s=2.0)
    assert idle.desired_replicas(obs(15, replicas=5)) == 4  # idle: s = 0, down one pod
    assert idle.desired_replicas(obs(30, replicas=4)) == 4  # within 120 s of the last step
    assert idle.desired_replicas(obs(140, replicas=4)) == 3


def test_llmd_credit_counts_only_ready_replicas() -> None:
    policy = LlmdSloPolicy(ttft_target_s=1.0)
    # half the replicas are still starting: s c / 0.55 with c = 0.5
    desired = policy.desired_replicas(with_ttft(obs(15, replicas=4, ready=2), 1.0))
    s = 0.75 + 0.25 * 0.9
    assert desired == max(4, 4 + math.ceil(round(4 * (s * 0.5 / 0.55 - 1), 9)))


def test_dynamo_sizes_the_forecast_by_the_true_engines_capacity() -> None:
    engine = get_profile_by_name("nvidia-a100-80gb/8B")
    policy = DynamoPlannerPolicy(engine=engine, ttft_target_s=2.0)
    desired = policy.desired_replicas(obs(180, replicas=1, rate=20.0))
    capacity = max_arrival_rate(engine, 1000.0, 200.0, Slo(ttft_ms=2000, ttft_percentile=99), 1.0)
    assert desired == math.ceil(20.0 / capacity) or desired == math.ceil(20.0 / capacity) + 1  # token grid
    assert DynamoPlannerPolicy(engine=engine, ttft_target_s=2.0).desired_replicas(obs(180, rate=0.0)) == 1


def test_arima_forecast_follows_a_trend_and_falls_back_on_short_series() -> None:
    assert arima_forecast([3.0, 5.0]) == 5.0
    assert arima_forecast([]) == 0.0
    ramp = [float(v) for v in range(1, 21)]
    assert arima_forecast(ramp) == pytest.approx(21.0, abs=1.5)
