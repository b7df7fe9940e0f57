"""decide()'s stages, each on its own: history, forecast, steady capacity, burst allowance,
observed-queue factor, limits, scale-down, predicted latency. Expected values come from the
capacity model called directly (kiban.capacity.batching) or from arithmetic written out here."""

from __future__ import annotations

import math
import random

import pytest

from kiban.autoscale.policy import (
    CAPACITY_GRID_RATIO,
    History,
    Observation,
    PolicyState,
    ScalingConfig,
    Sizing,
    burst_absorption_rps,
    burst_allowance_rps,
    burst_factor_stage,
    busy_sizing,
    check_observation,
    forecast_stage,
    idle_sizing,
    limits_stage,
    predicted_latency,
    round_tokens_up,
    scale_down_stage,
    steady_capacity_stage,
    update_history,
)
from kiban.capacity.batching import Slo, max_arrival_rate, prefill_alone_ms
from kiban.capacity.engine_profile import EngineProfile

PROFILE = EngineProfile(name="test/8B", gpu="test-gpu", model_params_b=8.0, alpha_ms=10.0, beta_ms=0.3,
                        gamma_ms=10.0, delta_ms=0.05, max_num_seqs=64, kv_cache_tokens=200_000,
                        startup_s=120.0, source="unit test")
SLO = Slo(ttft_ms=500)
# token counts on the capacity grid's points, so the policy's interpolated capacity is the node itself
PROMPT = round(CAPACITY_GRID_RATIO ** 72, 6)  # ~960 tokens
OUTPUT = round(CAPACITY_GRID_RATIO ** 51, 6)  # ~129 tokens


def config(**overrides) -> ScalingConfig:
    values = dict(min_replicas=1, max_replicas=50, slo=SLO, startup_s=120.0)
    values.update(overrides)
    return ScalingConfig(**values)


def observe(t: float, rate: float, current: int = 1, **extra) -> Observation:
    values = dict(time_s=t, metrics_available=True, arrival_rate_rps=rate, mean_prompt_tokens=PROMPT,
                  mean_output_tokens=OUTPUT, running=0.0, waiting=0.0, current_replicas=current,
                  ready_replicas=current)
    values.update(extra)
    return Observation(**values)


def history(now: float = 0.0, **overrides) -> History:
    values = dict(now_s=now, first_seen_s=0.0, last_traffic_s=None, rate_samples=(), burst_samples=(),
                  token_samples=(), sample_s=60.0)
    values.update(overrides)
    return History(**values)


# -- stage 0: history ------------------------------------------------------------------------------


def test_history_prunes_each_window_and_keeps_tokens_only_with_traffic():
    cfg = config(trend_window_s=30.0, burst_window_s=45.0, token_window_s=15.0)
    state = PolicyState()
    for t, rate in ((0.0, 4.0), (15.0, 0.0), (30.0, 2.0), (45.0, 3.0)):
        h = update_history(observe(t, rate, rate_window_s=60.0), cfg, state)
        state = PolicyState(rate_samples=h.rate_samples, burst_samples=h.burst_samples,
                            token_samples=h.token_samples, first_seen_time_s=h.first_seen_s,
                            last_traffic_time_s=h.last_traffic_s)
    assert [t for t, _ in h.rate_samples] == [15.0, 30.0, 45.0]
    assert [t for t, _ in h.burst_samples] == [0.0, 15.0, 30.0, 45.0]
    assert [t for t, *_ in h.token_samples] == [30.0, 45.0]  # the idle sample at 15 s adds none
    assert h.first_seen_s == 0.0 and h.last_traffic_s == 45.0
    # a burst sample is the rate less one Poisson sd of a 60 s count: 3 - sqrt(3 / 60)
    assert h.burst_samples[-1][1] == pytest.approx(3.0 - math.sqrt(3.0 / 60.0))


def test_history_sample_length_is_the_rate_window_or_the_gap_since_the_last_sample():
    cfg = config()
    assert update_history(observe(0.0, 1.0, rate_window_s=60.0), cfg, PolicyState()).sample_s == 60.0
    assert update_history(observe(0.0, 1.0), cfg, PolicyState()).sample_s is None
    state = PolicyState(burst_samples=((10.0, 1.0),))
    assert update_history(observe(25.0, 1.0), cfg, state).sample_s == 15.0


def test_history_idle_observation_keeps_the_last_traffic_time():
    state = PolicyState(last_traffic_time_s=100.0, first_seen_time_s=0.0)
    h = update_history(observe(200.0, 0.0), config(), state)
    assert h.last_traffic_s == 100.0
    h = update_history(observe(200.0, 0.0, waiting=1.0), config(), state)
    assert h.last_traffic_s == 200.0  # a waiting request is traffic


# -- stage 1: forecast -----------------------------------------------------------------------------


def test_forecast_is_the_current_rate_on_a_steady_noisy_stream():
    rng = random.Random(3)
    samples = tuple((15.0 * i, 10.0 + rng.gauss(0.0, 1.0)) for i in range(13))
    assert forecast_stage(samples[-1][1], samples, 120.0, config()) == samples[-1][1]


def test_forecast_extrapolates_a_clean_ramp_over_the_lookahead_and_caps_it():
    samples = tuple((15.0 * i, 10.0 + 0.1 * i) for i in range(13))  # +0.1 req/s per 15 s
    rate = samples[-1][1]
    assert forecast_stage(rate, samples, 120.0, config()) == pytest.approx(rate + 0.1 / 15.0 * 120.0)
    assert forecast_stage(rate, samples, 1e6, config(max_lookahead_factor=1.5)) == pytest.approx(1.5 * rate)


# -- stage 2: steady capacity ----------------------------------------------------------------------


def test_steady_capacity_is_the_capacity_model_at_the_slo():
    steady = steady_capacity_stage(PROFILE, PROMPT, OUTPUT, config(), None)
    assert steady.slo_attainable and steady.fits_kv and steady.notes == ()
    assert steady.capacity == pytest.approx(max_arrival_rate(PROFILE, PROMPT, OUTPUT, SLO, 1.0), rel=1e-9)
    assert steady.slo_text == "TTFT p95 ≤ 500 ms"


def test_steady_capacity_without_a_latency_target_applies_the_utilisation_cap():
    cfg = config(slo=Slo(), target_utilization=0.6)
    steady = steady_capacity_stage(PROFILE, PROMPT, OUTPUT, cfg, None)
    assert steady.capacity == pytest.approx(max_arrival_rate(PROFILE, PROMPT, OUTPUT, Slo(), 0.6), rel=1e-9)


def test_steady_capacity_of_an_unattainable_slo_falls_back_to_utilisation_and_says_so():
    alone_s = prefill_alone_ms(PROFILE, PROMPT, 0.0) / 1000.0
    cfg = config(slo=Slo(ttft_ms=0.5 * alone_s * 1000.0), target_utilization=0.75)
    steady = steady_capacity_stage(PROFILE, PROMPT, OUTPUT, cfg, None)
    assert not steady.slo_attainable and steady.slo_text == "no latency target"
    assert steady.capacity == pytest.approx(max_arrival_rate(PROFILE, PROMPT, OUTPUT, Slo(), 0.75), rel=1e-9)
    assert "unattainable on test/8B even unloaded" in steady.notes[0]


def test_steady_capacity_is_zero_when_a_request_does_not_fit_the_kv_cache():
    steady = steady_capacity_stage(PROFILE, 250_000.0, OUTPUT, config(), None)
    assert steady.capacity == 0.0 and not steady.fits_kv


# -- stage 3: burst allowance ----------------------------------------------------------------------


def test_burst_allowance_leaves_the_overflow_share_above_it():
    samples = tuple((15.0 * i, r) for i, r in enumerate([1.0] * 8 + [10.0, 1.0]))
    cfg = config(burst_overflow=0.2)
    level = burst_allowance_rps(history(rate_samples=(), burst_samples=samples), cfg)
    total = sum(r for _, r in samples)
    assert sum(max(0.0, r - level) for _, r in samples) == pytest.approx(0.2 * total)
    assert burst_allowance_rps(history(burst_samples=samples), config(burst_window_s=0.0)) == 0.0


def test_burst_absorption_is_the_steady_capacity_times_the_slack_over_one_sample():
    cfg = config()
    steady = max_arrival_rate(PROFILE, PROMPT, OUTPUT, SLO, 1.0)
    alone_s = prefill_alone_ms(PROFILE, PROMPT, 0.0) / 1000.0
    absorbs = burst_absorption_rps(PROFILE, PROMPT, OUTPUT, cfg, steady, steady, 60.0, None)
    assert absorbs == pytest.approx(steady * (1.0 + (0.5 - alone_s) / 60.0), rel=1e-6)
    # scaled by what stable_capacity did to the steady capacity
    half = burst_absorption_rps(PROFILE, PROMPT, OUTPUT, cfg, 0.5 * steady, steady, 60.0, None)
    assert half == pytest.approx(0.5 * absorbs, rel=1e-9)
    no_ttft = config(slo=Slo(itl_ms=50.0))
    assert burst_absorption_rps(PROFILE, PROMPT, OUTPUT, no_ttft, 3.0, 3.0, 60.0, None) == 3.0


def sized_capacity(cfg: ScalingConfig) -> float:
    """The steady capacity busy/idle sizing use: stage 2 at the token means rounded up to their grid."""
    return steady_capacity_stage(PROFILE, round_tokens_up(PROMPT), round_tokens_up(OUTPUT), cfg, None).capacity


def test_busy_sizing_takes_the_larger_of_the_forecast_and_the_burst_need():
    cfg = config(burst_overflow=0.05)
    capacity = sized_capacity(cfg)
    rate = 2.5 * capacity
    steady = history(rate_samples=((0.0, rate),), token_samples=((0.0, rate, PROMPT, OUTPUT),))
    sizing = busy_sizing(observe(0.0, rate), cfg, PolicyState(), steady, PROFILE)
    assert sizing.recommended == 3 and sizing.capacity == pytest.approx(capacity, rel=1e-9)
    assert sizing.head.endswith("→ 3 replicas") and "burst allowance" not in sizing.head
    bursty = history(rate_samples=((0.0, rate),), token_samples=((0.0, rate, PROMPT, OUTPUT),),
                     burst_samples=tuple((15.0 * i, 8.0 * capacity if i == 5 else 0.1) for i in range(10)))
    sizing = busy_sizing(observe(0.0, rate, rate_window_s=60.0), cfg, PolicyState(), bursty, PROFILE)
    burst = burst_allowance_rps(bursty, cfg)
    absorbs = burst_absorption_rps(PROFILE, round_tokens_up(PROMPT), round_tokens_up(OUTPUT), cfg, capacity,
                                   capacity, 60.0, None)
    assert sizing.recommended == math.ceil(burst / absorbs) > 3
    assert "burst allowance" in sizing.head


def test_busy_sizing_adds_a_harmful_queue_to_drain():
    cfg = config(backlog_drain_s=60.0, burst_window_s=0.0)
    capacity = sized_capacity(cfg)
    rate = 1.5 * capacity
    h = history(rate_samples=((0.0, rate),), token_samples=((0.0, rate, PROMPT, OUTPUT),))
    waiting = 120.0 * capacity  # drains at 2 x capacity over 60 s
    obs = observe(0.0, rate, waiting=waiting, observed_ttft_p95_s=2.0)
    sizing = busy_sizing(obs, cfg, PolicyState(), h, PROFILE)
    assert sizing.recommended == math.ceil(round((rate + waiting / 60.0) / capacity, 9)) == 4
    assert "waiting to drain in 60 s" in sizing.head


def test_idle_sizing_keeps_the_minimum_then_goes_to_zero_after_the_idle_window():
    cfg = config(min_replicas=0, scale_to_zero_idle_s=600.0)
    early = idle_sizing(observe(500.0, 0.0), cfg, history(500.0, last_traffic_s=0.0), PROFILE)
    assert early.recommended == 1 and "minimum kept while idle" in early.head
    late = idle_sizing(observe(600.0, 0.0), cfg, history(600.0, last_traffic_s=0.0), PROFILE)
    assert late.recommended == 0 and late.forecast == 0.0


def test_idle_sizing_in_a_lull_keeps_the_fleet_recent_bursts_need_at_the_steady_capacity():
    cfg = config(burst_overflow=0.05)
    capacity = sized_capacity(cfg)
    h = history(150.0, last_traffic_s=135.0, token_samples=((135.0, 5 * capacity, PROMPT, OUTPUT),),
                burst_samples=tuple((15.0 * i, 5.0 * capacity if i % 3 == 0 else 0.0) for i in range(10)))
    sizing = idle_sizing(observe(150.0, 0.0, current=4), cfg, h, PROFILE)
    burst = burst_allowance_rps(h, cfg)
    assert sizing.recommended == math.ceil(round(burst / capacity, 9)) > 1
    assert sizing.capacity == pytest.approx(capacity, rel=1e-9) and "burst allowance" in sizing.head


# -- stage 3c: observed queue ------------------------------------------------------------------------


def test_a_queue_the_rate_missed_raises_the_count_by_a_fading_factor():
    cfg = config(burst_window_s=300.0, burst_floor_max_step=1.5)
    # 4 ready replicas, p99 TTFT 1.0 s against 0.5 s: 8 would have cleared it, capped at 1.5 x 4 = 6
    obs = observe(0.0, 1.0, current=4, observed_ttft_slo_percentile_s=1.0, observed_ttft_p95_s=0.8)
    count, factors, notes = burst_factor_stage(obs, cfg, PolicyState(), 4)
    assert count == 6 and factors == ((0.0, 1.5),) and "× 1.50 → 6 replicas" in notes[0]
    later = observe(300.0, 1.0, current=4)  # halfway through the 2 x 300 s fade: 1 + 0.5 x 0.5
    count, _, _ = burst_factor_stage(later, cfg, PolicyState(burst_factors=factors), 4)
    assert count == math.ceil(4 * 1.25)


def test_no_factor_without_a_p95_miss_or_without_a_burst_window():
    obs = observe(0.0, 1.0, current=4, observed_ttft_slo_percentile_s=1.0, observed_ttft_p95_s=0.3)
    assert burst_factor_stage(obs, config(), PolicyState(), 4) == (4, (), ())
    missed = observe(0.0, 1.0, current=4, observed_ttft_slo_percentile_s=1.0, observed_ttft_p95_s=0.8)
    assert burst_factor_stage(missed, config(burst_window_s=0.0), PolicyState(), 4) == (4, (), ())


# -- stage 4: limits ---------------------------------------------------------------------------------


def test_limits_cap_at_max_replicas_or_the_gpu_budget_and_say_which():
    assert limits_stage(7, config(max_replicas=8)) == (7, None, ())
    count, limited, notes = limits_stage(12, config(max_replicas=8))
    assert (count, limited) == (8, "MaxReplicas") and "capped at 8 by maxReplicas" in notes[0]
    count, limited, notes = limits_stage(12, config(max_replicas=20, gpus_per_replica=4, gpu_budget=18))
    assert (count, limited) == (4, "GpuBudget") and "GPU budget of 18 GPUs (4 per replica)" in notes[0]


# -- stage 5: scale-down -----------------------------------------------------------------------------


def test_scale_down_goes_up_at_once_and_down_to_the_window_highest_by_steps():
    cfg = config(scale_down_stabilization_s=300.0, max_scale_down_step=2)
    assert scale_down_stage(observe(400.0, 1.0, current=3), cfg, 9, ((400.0, 9),), 0.0) == (9, ())
    target, notes = scale_down_stage(observe(400.0, 1.0, current=10), cfg, 2, ((200.0, 9), (400.0, 2)), 0.0)
    assert target == 9 and notes == ()
    target, notes = scale_down_stage(observe(400.0, 1.0, current=10), cfg, 2, ((200.0, 3), (400.0, 2)), 0.0)
    assert target == 8 and "stepped down from 10 to 8 (at most 2 per decision)" in notes[0]
    target, notes = scale_down_stage(observe(400.0, 1.0, current=10), cfg, 2, ((200.0, 12), (400.0, 2)), 0.0)
    assert target == 10 and "12 recommended within the 300 s scale-down window" in notes[0]


def test_scale_down_waits_one_window_of_history_and_for_a_harmful_queue():
    cfg = config(scale_down_stabilization_s=300.0)
    target, notes = scale_down_stage(observe(100.0, 1.0, current=5), cfg, 1, ((100.0, 1),), 0.0)
    assert target == 5 and "less than one 300 s scale-down window" in notes[0]
    queued = observe(400.0, 1.0, current=5, waiting=9.0, observed_ttft_p95_s=3.0)
    target, notes = scale_down_stage(queued, cfg, 1, ((400.0, 1),), 0.0)
    assert target == 5 and "9 requests waiting with TTFT above target" in notes[-1]


def test_scale_to_zero_waits_out_the_window_like_any_scale_down():
    """Zero, after its own idle window, is a scale-down like any other (core's 1053002: a model
    woken by hand was sent straight back to zero); this replaces the split's test that zero was
    not held by the window, the rule before that change."""
    cfg = config(min_replicas=0, scale_down_stabilization_s=300.0)
    target, notes = scale_down_stage(observe(100.0, 0.0, current=2), cfg, 0, ((0.0, 2), (100.0, 0)), 0.0)
    assert target == 2 and "less than one 300 s scale-down window" in notes[0]
    target, notes = scale_down_stage(observe(400.0, 0.0, current=2), cfg, 0, ((200.0, 2), (400.0, 0)), 0.0)
    assert target == 2 and "2 recommended within the 300 s scale-down window" in notes[0]
    assert scale_down_stage(observe(400.0, 0.0, current=1), cfg, 0, ((400.0, 0),), 0.0) == (0, ())


# -- the rest --------------------------------------------------------------------------------------


def test_predicted_latency_is_infinite_when_a_request_does_not_fit():
    sizing = Sizing(1, "", mean_prompt=250_000.0, mean_output=OUTPUT)
    assert predicted_latency(observe(0.0, 1.0), config(), PROFILE, 1, sizing) == (math.inf, None)
    assert predicted_latency(observe(0.0, 0.0), config(), PROFILE, 1, Sizing(1, "")) == (None, None)
    fits = Sizing(1, "", mean_prompt=PROMPT, mean_output=OUTPUT)
    ttft, itl = predicted_latency(observe(0.0, 0.1), config(), PROFILE, 1, fits)
    assert 0 < ttft < 0.5 and itl >= PROFILE.alpha_ms / 1000.0


def test_check_observation_names_what_cannot_be_used():
    assert check_observation(observe(0.0, 1.0)) is None
    assert check_observation(observe(0.0, math.inf)) == "arrival_rate_rps is inf"
    assert check_observation(observe(0.0, 1.0, mean_output_tokens=None)) == "mean_output_tokens is None"
    assert check_observation(Observation(time_s=0.0, metrics_available=False, current_replicas=1)) == \
        "collector reported none"
    with pytest.raises(ValueError, match="current_replicas"):
        check_observation(observe(0.0, 1.0, current=-1))
