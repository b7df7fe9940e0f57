"""The pure autoscaling policy: scale-up, stabilised scale-down, limits, zero, fail-safe."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiban.autoscale.policy import (
    Observation,
    PolicyState,
    ScalingConfig,
    capacity_per_replica_rps,
    decide,
    forecast_rate_rps,
    round_tokens_up,
    trend_slope_rps_per_s,
)
from kiban.capacity.batching import Slo
from kiban.capacity.engine_profile import EngineProfile

PROFILE = EngineProfile(name="test/8B", gpu="test-gpu", model_params_b=8.0, alpha_ms=10.0, beta_ms=0.3,
                        gamma_ms=10.0, delta_ms=0.05, max_num_seqs=64, kv_cache_tokens=200_000,
                        startup_s=120.0, source="unit test")
SLO = Slo(ttft_ms=500)


def config(**overrides) -> ScalingConfig:
    values = dict(min_replicas=1, max_replicas=50, slo=SLO, startup_s=120.0)
    values.update(overrides)
    return ScalingConfig(**values)


def observe(t: float, rate: float | None, current: int, **extra) -> Observation:
    values = dict(time_s=t, metrics_available=True, arrival_rate_rps=rate, mean_prompt_tokens=1000.0,
                  mean_output_tokens=130.0, running=0.0, waiting=0.0, current_replicas=current,
                  ready_replicas=current)
    values.update(extra)
    return Observation(**values)


def per_replica() -> float:
    return capacity_per_replica_rps(PROFILE, round_tokens_up(1000.0), round_tokens_up(130.0), SLO, 0.75)


def test_scales_up_at_once_to_what_the_model_says():
    rate = 10.3 * per_replica()
    decision, state = decide(observe(0.0, rate, current=1), config(), PolicyState(), PROFILE)
    assert decision.replicas == 11
    assert decision.metrics_ok and decision.limited is None
    assert decision.capacity_per_replica_rps == pytest.approx(per_replica())
    assert decision.predicted_ttft_p95_s <= 0.5
    assert state.recommendations == ((0.0, 11),)


def test_reason_carries_the_numbers():
    rate = 12.3
    decision, _ = decide(observe(0.0, rate, current=1), config(), PolicyState(), PROFILE)
    assert "λ=12.3 req/s" in decision.reason
    assert f"{per_replica():.3g} req/s" in decision.reason
    assert "TTFT p95 ≤ 500 ms" in decision.reason
    assert f"→ {decision.replicas} replicas" in decision.reason


def test_no_scale_down_inside_the_window_then_bounded_steps():
    cfg = config(scale_down_stabilization_s=300.0, max_scale_down_step=2)
    high = 9.5 * per_replica()
    decision, state = decide(observe(0.0, high, current=1), cfg, PolicyState(), PROFILE)
    current = decision.replicas
    assert current == 10
    low = 0.5 * per_replica()
    t = 0.0
    while t < 300.0:
        t += 15.0
        decision, state = decide(observe(t, low, current=current), cfg, state, PROFILE)
        if t <= 300.0:
            assert decision.replicas == current, f"scaled down at t={t} inside the window"
    assert "scale-down window" in decision.reason or decision.replicas < current
    history = []
    for _ in range(10):
        t += 15.0
        decision, state = decide(observe(t, low, current=current), cfg, state, PROFILE)
        assert current - decision.replicas <= 2
        current = decision.replicas
        history.append(current)
    assert history[-1] == 1 and history[0] == 8
    assert "stepped down from 10 to 8" in decide(observe(315.0, low, current=10), cfg,
                                                 PolicyState(recommendations=((0.0, 1),)), PROFILE)[0].reason


def test_fractional_step_removes_a_share():
    cfg = config(scale_down_stabilization_s=0.0, max_scale_down_step=0.5)
    decision, _ = decide(observe(0.0, 0.1, current=20), cfg, PolicyState(), PROFILE)
    assert decision.replicas == 10


def test_missing_metrics_keep_current_and_never_zero():
    cfg = config(min_replicas=0)
    for obs in (
        Observation(time_s=0.0, metrics_available=False, reason_unavailable="Prometheus unreachable",
                    current_replicas=3),
        observe(0.0, None, current=3),
        observe(0.0, math.nan, current=3),
        observe(0.0, 5.0, current=3, mean_prompt_tokens=math.nan),
    ):
        decision, state = decide(obs, cfg, PolicyState(), PROFILE)
        assert decision.replicas == 3 and not decision.metrics_ok
        assert "metrics unavailable" in decision.reason
        assert state.recommendations == ()
    decision, _ = decide(Observation(time_s=0.0, metrics_available=False, reason_unavailable="Prometheus unreachable",
                                     current_replicas=3), cfg, PolicyState(), PROFILE)
    assert "Prometheus unreachable" in decision.reason


def test_missing_metrics_still_respect_max():
    decision, _ = decide(Observation(time_s=0.0, metrics_available=False, current_replicas=9),
                         config(max_replicas=4), PolicyState(), PROFILE)
    assert decision.replicas == 4 and decision.limited == "MaxReplicas"


def test_scale_to_zero_only_after_idle_and_only_with_min_zero():
    cfg = config(min_replicas=0, scale_to_zero_idle_s=600.0, scale_down_stabilization_s=60.0)
    decision, state = decide(observe(0.0, 2.0, current=1), cfg, PolicyState(), PROFILE)
    current, t = decision.replicas, 0.0
    while t < 585.0:
        t += 15.0
        decision, state = decide(observe(t, 0.0, current=current), cfg, state, PROFILE)
        assert decision.replicas >= 1, f"went to zero after only {t} s idle"
        current = decision.replicas
    decision, state = decide(observe(600.0, 0.0, current=current), cfg, state, PROFILE)
    assert decision.replicas == 0 and "no requests for 600 s" in decision.reason
    # with a floor of one replica, idling never reaches zero
    decision, _ = decide(observe(5000.0, 0.0, current=1), config(min_replicas=1), state, PROFILE)
    assert decision.replicas == 1


def test_traffic_resets_the_idle_clock_and_wakes_from_zero():
    cfg = config(min_replicas=0, scale_to_zero_idle_s=600.0)
    state = PolicyState(last_traffic_time_s=0.0, first_seen_time_s=0.0)
    decision, state = decide(observe(590.0, 0.0, current=1, running=1.0), cfg, state, PROFILE)
    decision, state = decide(observe(900.0, 0.0, current=1), cfg, state, PROFILE)
    assert decision.replicas == 1  # only 310 s since a request was running
    decision, _ = decide(observe(1000.0, 0.5, current=0), cfg, state, PROFILE)
    assert decision.replicas == 1


def test_max_replicas_and_gpu_budget_are_reported():
    rate = 30 * per_replica()
    decision, _ = decide(observe(0.0, rate, current=1), config(max_replicas=8), PolicyState(), PROFILE)
    assert decision.replicas == 8 and decision.limited == "MaxReplicas"
    assert "capped at 8 by maxReplicas" in decision.reason
    budget = config(max_replicas=20, gpus_per_replica=2, gpu_budget=10)
    decision, _ = decide(observe(0.0, rate, current=1), budget, PolicyState(), PROFILE)
    assert decision.replicas == 5 and decision.limited == "GpuBudget"
    assert decision.replicas * 2 <= 10 and "GPU budget of 10 GPUs" in decision.reason


def test_a_harmful_queue_blocks_scale_down():
    cfg = config(scale_down_stabilization_s=0.0)
    obs = observe(0.0, 0.5 * per_replica(), current=6, waiting=12.0, observed_ttft_p95_s=2.0)
    decision, _ = decide(obs, cfg, PolicyState(), PROFILE)
    assert decision.replicas >= 6 and "waiting" in decision.reason
    calm = observe(0.0, 0.5 * per_replica(), current=6, waiting=12.0, observed_ttft_p95_s=0.1)
    assert decide(calm, cfg, PolicyState(), PROFILE)[0].replicas < 6


def test_looks_ahead_by_the_startup_time_on_a_rising_trend():
    cfg = config(scale_down_stabilization_s=0.0)
    base = per_replica()
    state = PolicyState()
    for i, t in enumerate(range(0, 181, 15)):
        rate = base * (2.05 + 0.1 * i)  # rising by 0.1 x capacity per 15 s
        decision, state = decide(observe(float(t), rate, current=3), cfg, state, PROFILE)
    naive = math.ceil(rate / base)
    assert decision.forecast_rate_rps > rate
    assert decision.replicas > naive
    assert "expected" in decision.reason and "in 120 s" in decision.reason


def test_forecast_never_below_now_and_bounded():
    assert forecast_rate_rps(10.0, -1.0, 120.0, 2.0) == 10.0
    assert forecast_rate_rps(10.0, 1.0, 120.0, 2.0) == 20.0
    assert forecast_rate_rps(10.0, 0.01, 100.0, 2.0) == pytest.approx(11.0)
    assert trend_slope_rps_per_s(((0.0, 1.0), (15.0, 2.0))) == 0.0  # too little history
    assert trend_slope_rps_per_s(((0.0, 1.0), (15.0, 2.0), (30.0, 3.0))) == pytest.approx(1 / 15)


def test_unattainable_slo_sizes_for_utilisation_and_says_so():
    cfg = config(slo=Slo(ttft_ms=5))
    decision, _ = decide(observe(0.0, 3.0, current=1), cfg, PolicyState(), PROFILE)
    assert decision.replicas >= 1 and "unattainable" in decision.reason


@pytest.mark.parametrize(
    "overrides, field",
    [(dict(max_replicas=0), "max_replicas"), (dict(min_replicas=5, max_replicas=2), "max_replicas"),
     (dict(target_utilization=1.5), "target_utilization"), (dict(gpu_budget=0, min_replicas=1), "gpu_budget"),
     (dict(max_scale_down_step=0), "max_scale_down_step"), (dict(peak_factor=0.5), "peak_factor")],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        config(**overrides)


def test_decision_status_is_json_safe():
    decision, _ = decide(observe(0.0, 2.0, current=0), config(max_replicas=1, min_replicas=0), PolicyState(), PROFILE)
    status = decision.as_status()
    assert status["desiredReplicas"] == decision.replicas and status["metricsOk"] is True
    assert all(not (isinstance(v, float) and not math.isfinite(v)) for v in status.values())


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(0.0, 500.0), extra=st.floats(0.0, 200.0), current=st.integers(0, 40))
def test_more_load_never_fewer_replicas(rate, extra, current):
    cfg = config(min_replicas=0)
    low, _ = decide(observe(0.0, rate, current=current), cfg, PolicyState(), PROFILE)
    high, _ = decide(observe(0.0, rate + extra, current=current), cfg, PolicyState(), PROFILE)
    assert high.replicas >= low.replicas
