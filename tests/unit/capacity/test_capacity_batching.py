"""The vLLM batching model: reductions to textbook queues, limits, and monotone sizing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiban.capacity import erlang
from kiban.capacity.batching import (
    Slo,
    batch_limit,
    itl_percentile_s,
    max_arrival_rate,
    predict,
    prefill_alone_ms,
    prompt_atoms,
    replicas_needed,
    service_rate_rps,
    step_ms,
    ttft_percentile_s,
)
from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.founding import mm1
from kiban_serving.sim.engine import Engine
from prompt_mixes import prompt_mix_from_cv  # tests/prompt_mixes.py


def make_profile(**overrides) -> EngineProfile:
    values = dict(name="test/8B", gpu="test-gpu", model_params_b=8.0, alpha_ms=10.0, beta_ms=0.3,
                  gamma_ms=10.0, delta_ms=0.05, max_num_seqs=64, kv_cache_tokens=200_000,
                  startup_s=120.0, source="unit test")
    values.update(overrides)
    return EngineProfile(**values)


def test_one_slot_one_token_is_mm1():
    # B = 1 and a single output token: service = prefill(1) = 100 ms, mu = 10/s
    profile = make_profile(max_num_seqs=1, gamma_ms=100.0, delta_ms=0.0, beta_ms=0.0)
    lam = 7.0
    textbook = mm1(lam, 10.0)
    pred = predict(profile, lam, 500, 1)
    assert pred.batch_limit == 1
    assert pred.wait_probability == pytest.approx(textbook.utilization)
    assert pred.mean_wait_s == pytest.approx(textbook.mean_wait)
    assert pred.ttft_mean_s == pytest.approx(textbook.mean_time_in_system)  # W_q + S
    assert pred.utilization == pytest.approx(0.7)
    # TTFT = W_q + 0.1 s with P(W_q > t) = rho exp(-(mu - lambda) t)
    expected_p95 = 0.1 + math.log(0.7 / 0.05) / (10.0 - lam)
    assert pred.ttft_p95_s == pytest.approx(expected_p95, rel=1e-5)
    expected_p50 = 0.1 + math.log(0.7 / 0.5) / (10.0 - lam)
    assert pred.ttft_p50_s == pytest.approx(expected_p50, rel=1e-5)


def test_batch_independent_step_times_are_mmc():
    # beta = delta = 0: mu(n) = n mu(1), the M/M/c queue with c = B (Erlang C)
    profile = make_profile(max_num_seqs=8, beta_ms=0.0, delta_ms=0.0, alpha_ms=20.0, gamma_ms=40.0)
    mu_one = service_rate_rps(profile, 300, 11, 1)  # 1 / (40 + 10 * 20 ms) = 4.1667/s
    assert mu_one == pytest.approx(1000 / 240)
    lam = 25.0
    pred = predict(profile, lam, 300, 11)
    assert pred.wait_probability == pytest.approx(erlang.wait_probability(lam, mu_one, 8), rel=1e-9)
    assert pred.mean_wait_s == pytest.approx(erlang.mean_wait(lam, mu_one, 8), rel=1e-9)
    assert pred.mean_batch == pytest.approx(lam / mu_one, rel=1e-9)  # busy servers = offered load
    assert pred.utilization == pytest.approx(lam / (8 * mu_one))


def test_finite_queue_converges_to_the_unbounded_one():
    profile = make_profile()
    lam = 0.9 * predict(profile, 0.0, 800, 100).max_throughput_rps
    unbounded = predict(profile, lam, 800, 100)
    bounded = predict(profile, lam, 800, 100, max_queue=400)
    assert bounded.wait_probability == pytest.approx(unbounded.wait_probability, rel=1e-4)
    assert bounded.mean_wait_s == pytest.approx(unbounded.mean_wait_s, rel=1e-4)
    assert bounded.ttft_p99_s == pytest.approx(unbounded.ttft_p99_s, rel=1e-4)
    assert bounded.throughput_rps == pytest.approx(lam, rel=1e-6)
    small = predict(profile, lam, 800, 100, max_queue=2)
    assert small.throughput_rps < lam  # a short queue turns arrivals away
    assert small.mean_wait_s < unbounded.mean_wait_s


def test_no_load_means_a_lone_request():
    profile = make_profile()
    pred = predict(profile, 0.0, 1000, 100)
    assert pred.ttft_p99_s == pytest.approx((10.0 + 0.05 * 1000) / 1000)
    assert pred.itl_p95_s == pytest.approx((10.0 + 0.3) / 1000)
    assert pred.utilization == 0.0 and pred.mean_batch == 0.0


def test_overload_is_reported_unstable():
    profile = make_profile()
    top = predict(profile, 0.0, 1000, 100).max_throughput_rps
    pred = predict(profile, top * 1.01, 1000, 100)
    assert not pred.stable
    assert math.isinf(pred.ttft_p95_s)
    assert ttft_percentile_s(profile, top * 1.01, 1000, 100, 90) == math.inf


def test_kv_cache_limits_the_batch():
    profile = make_profile(max_num_seqs=256, kv_cache_tokens=11_000)
    assert batch_limit(profile, 1000, 100) == 10
    with pytest.raises(ValueError, match="mean_prompt_tokens"):
        batch_limit(profile, 20_000, 100)


def test_large_batches_do_not_overflow():
    profile = make_profile(max_num_seqs=4096, kv_cache_tokens=10**9, beta_ms=0.01)
    top = predict(profile, 0.0, 200, 50).max_throughput_rps
    pred = predict(profile, 0.95 * top, 200, 50)
    assert pred.stable and all(math.isfinite(v) for v in (pred.ttft_p99_s, pred.itl_p95_s, pred.mean_batch))
    assert 0 < pred.mean_batch <= 4096


def test_percentiles_are_ordered():
    profile = make_profile()
    lam = 0.8 * predict(profile, 0.0, 1000, 150).max_throughput_rps
    pred = predict(profile, lam, 1000, 150)
    assert pred.ttft_p50_s <= pred.ttft_p95_s <= pred.ttft_p99_s
    assert itl_percentile_s(profile, lam, 1000, 150, 50) <= pred.itl_p95_s


def test_max_arrival_rate_sits_on_the_binding_constraint():
    profile = make_profile()
    slo = Slo(ttft_ms=150, ttft_percentile=99)
    rate = max_arrival_rate(profile, 1000, 150, slo, target_utilization=0.95)
    assert rate > 0
    assert ttft_percentile_s(profile, rate, 1000, 150, 99) <= 0.150
    # one step of the search grid (0.17 %) above the answer breaks a constraint
    assert ttft_percentile_s(profile, rate * 1.002, 1000, 150, 99) > 0.150 or \
        predict(profile, rate * 1.002, 1000, 150).utilization > 0.95


def test_utilisation_caps_capacity_when_latency_is_easy():
    profile = make_profile()
    rate = max_arrival_rate(profile, 500, 100, Slo(ttft_ms=10_000), target_utilization=0.6)
    top = predict(profile, 0.0, 500, 100).max_throughput_rps
    assert rate == pytest.approx(0.6 * top, rel=2e-3)  # the search grid is 0.17 % fine
    assert rate <= 0.6 * top


def test_unattainable_slo_gives_zero_capacity():
    profile = make_profile()
    assert max_arrival_rate(profile, 1000, 100, Slo(ttft_ms=30)) == 0.0  # a lone prefill takes 60 ms
    assert max_arrival_rate(profile, 1000, 100, Slo(itl_ms=5)) == 0.0  # a lone step takes 10.3 ms


@pytest.mark.parametrize(
    "total, peak, per_replica, low, high, expected",
    [(12.3, 1.0, 4.1, 0, None, 3), (12.0, 1.0, 4.0, 0, None, 3), (12.0, 2.0, 4.0, 0, None, 6),
     (12.0, 1.0, 4.0, 0, 2, 2), (0.0, 1.0, 4.0, 0, None, 0), (0.0, 1.0, 4.0, 2, None, 2),
     (0.1, 1.0, 4.0, 0, None, 1)],
)
def test_replicas_needed(total, peak, per_replica, low, high, expected):
    assert replicas_needed(total, peak, per_replica, low, high) == expected


def test_replicas_needed_rejects_no_capacity():
    with pytest.raises(ValueError, match="per_replica_rate_rps"):
        replicas_needed(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="peak_factor"):
        replicas_needed(1.0, 0.5, 1.0)


def test_slo_validation_names_the_field():
    with pytest.raises(ValueError, match="ttft_percentile"):
        Slo(ttft_ms=500, ttft_percentile=97)
    with pytest.raises(ValueError, match="itl_ms"):
        Slo(itl_ms=-1)
    assert Slo(ttft_ms=500, itl_ms=50).describe() == "TTFT p95 ≤ 500 ms, ITL p95 ≤ 50 ms"


# -- properties ------------------------------------------------------------------------------
SMALL = make_profile(max_num_seqs=32, kv_cache_tokens=60_000)
prompts = st.integers(min_value=50, max_value=1500)
outputs = st.integers(min_value=2, max_value=300)
ttfts = st.sampled_from([80.0, 150.0, 300.0, 1000.0])
targets = st.sampled_from([0.5, 0.7, 0.85, 0.95])
FAST = settings(max_examples=25, deadline=None)


@FAST
@given(prompt=prompts, output=outputs, ttft=ttfts, target=targets,
       load=st.floats(0.1, 200.0), extra=st.floats(0.0, 100.0))
def test_more_load_never_fewer_replicas(prompt, output, ttft, target, load, extra):
    capacity = max_arrival_rate(SMALL, prompt, output, Slo(ttft_ms=ttft), target)
    if capacity == 0:
        return
    assert replicas_needed(load + extra, 1.0, capacity) >= replicas_needed(load, 1.0, capacity)


@FAST
@given(prompt=prompts, output=outputs, target=targets, loose=ttfts, tight=ttfts,
       percentile=st.sampled_from([50, 90, 95, 99]), load=st.floats(0.1, 100.0))
def test_tighter_slo_never_fewer_replicas(prompt, output, target, loose, tight, percentile, load):
    loose, tight = max(loose, tight), min(loose, tight)
    cap_loose = max_arrival_rate(SMALL, prompt, output, Slo(ttft_ms=loose, ttft_percentile=percentile), target)
    cap_tight = max_arrival_rate(SMALL, prompt, output, Slo(ttft_ms=tight, ttft_percentile=percentile), target)
    assert cap_tight <= cap_loose
    if cap_tight > 0:
        assert replicas_needed(load, 1.0, cap_tight) >= replicas_needed(load, 1.0, cap_loose)


@FAST
@given(prompt=prompts, output=outputs, ttft=ttfts, low=targets, high=targets, load=st.floats(0.1, 100.0))
def test_higher_target_utilisation_never_more_replicas(prompt, output, ttft, low, high, load):
    low, high = min(low, high), max(low, high)
    cap_low = max_arrival_rate(SMALL, prompt, output, Slo(ttft_ms=ttft), low)
    cap_high = max_arrival_rate(SMALL, prompt, output, Slo(ttft_ms=ttft), high)
    assert cap_high >= cap_low
    if cap_low > 0:
        assert replicas_needed(load, 1.0, cap_high) <= replicas_needed(load, 1.0, cap_low)


@FAST
@given(short=prompts, longer=st.integers(0, 1500), output=outputs, ttft=ttfts, target=targets)
def test_longer_prompts_never_more_capacity(short, longer, output, ttft, target):
    slo = Slo(ttft_ms=ttft, ttft_percentile=99)
    assert max_arrival_rate(SMALL, short + longer, output, slo, target) <= \
        max_arrival_rate(SMALL, short, output, slo, target)


# -- the step chain: what the simulator engine does, step by step --------------------------------


@pytest.mark.parametrize("decoding, prefill", [(0, 1000), (5, 0), (5, 700), (40, 2000)])
def test_step_time_is_the_engines(decoding, prefill):
    profile = make_profile(gamma_ms=14.0)  # gamma != alpha: the fixed cost is paid once, the larger
    engine_ms = Engine(profile).step_time_s(decoding, prefill) * 1e3
    model_ms = step_ms(profile, decoding, prefill) if prefill else 10.0 + 0.3 * decoding
    assert model_ms == pytest.approx(engine_ms)


def test_long_prompts_are_chunked_over_the_token_budget():
    profile = make_profile()
    # 3000 tokens, nothing running: 2048 in one step, 952 in the next
    two_steps = (10.0 + 0.05 * 2048) + (10.0 + 0.05 * 952)
    assert prefill_alone_ms(profile, 3000, 0) == pytest.approx(two_steps)
    assert predict(profile, 0.0, 3000, 100).ttft_p99_s == pytest.approx(two_steps / 1000)
    one_step = predict(profile, 0.0, 3000, 100, max_num_batched_tokens=4096).ttft_p99_s
    assert one_step == pytest.approx((10.0 + 0.05 * 3000) / 1000)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        predict(profile, 1.0, 3000, 100, max_num_batched_tokens=0)


def test_an_arrival_can_wait_out_another_prompts_prefill():
    # Prefill steps (10 + 0.3 + 100 ms) fill about a quarter of the time at 2.2 req/s, so more
    # than 5 % of arrivals find one under way with over a quarter of it left to run.
    profile = make_profile(delta_ms=0.1)
    alone_s = prefill_alone_ms(profile, 1000, 1) / 1000
    pred = predict(profile, 2.2, 1000, 20)
    assert pred.utilization < 0.5
    assert pred.ttft_p95_s > 1.25 * alone_s
    assert pred.ttft_p50_s < 1.25 * alone_s  # the median arrival still lands in a short step


def test_prompt_mix_is_rescaled_to_the_mean_and_validated():
    atoms = prompt_atoms(1000, ((1, 3.0), (3, 1.0)))  # shape: 3/4 short, 1/4 three times longer
    assert [v for atom in atoms for v in atom] == pytest.approx([2000 / 3, 0.75, 2000.0, 0.25])
    assert prompt_atoms(800) == ((800.0, 1.0),)
    with pytest.raises(ValueError, match="prompt_mix"):
        prompt_atoms(1000, ((100, -1.0),))
    with pytest.raises(ValueError, match="prompt_mix"):
        prompt_atoms(1000, ((100, 0.0),))


def test_gamma_mix_has_mean_one_and_the_asked_spread():
    mix = prompt_mix_from_cv(1.0, points=32)
    mean = sum(t * p for t, p in mix)
    spread = math.sqrt(sum(p * (t - mean) ** 2 for t, p in mix))
    assert mean == pytest.approx(1.0, rel=0.02)
    assert spread == pytest.approx(1.0, rel=0.15)  # quantile points under-represent the tail


def test_mixed_prompt_lengths_lengthen_the_tail_at_the_same_mean():
    profile = make_profile()
    rate = 0.4 * predict(profile, 0.0, 1000, 130).max_throughput_rps
    fixed = predict(profile, rate, 1000, 130)
    mixed = predict(profile, rate, 1000, 130, prompt_mix=((400, 0.8), (3400, 0.2)))
    assert mixed.ttft_p95_s > fixed.ttft_p95_s
    assert mixed.ttft_p50_s < fixed.ttft_p50_s  # most prompts are shorter than the mean


@pytest.mark.parametrize("prompt", [300, 1000, 1900, 4500])
def test_ttft_percentiles_never_fall_as_load_rises(prompt):
    profile = make_profile(max_num_seqs=32, kv_cache_tokens=200_000)
    top = predict(profile, 0.0, prompt, 100).max_throughput_rps
    previous = (0.0, 0.0, 0.0)
    for share in [0.02 * k for k in range(1, 49)]:
        pred = predict(profile, share * top, prompt, 100)
        current = (pred.ttft_p50_s, pred.ttft_p95_s, pred.ttft_p99_s)
        assert all(c >= p * (1 - 1e-6) for c, p in zip(current, previous)), (share, previous, current)
        previous = current


def test_prompts_many_budgets_long_are_chunked_under_load():
    # half the prompts are 25 200 tokens (13 budgets): at least that many full steps each
    profile = make_profile(kv_cache_tokens=2_000_000)
    mix = ((0.2, 0.5), (1.8, 0.5))
    rate = 0.5 * predict(profile, 0.0, 14_000, 100).max_throughput_rps
    pred = predict(profile, rate, 14_000, 100, prompt_mix=mix)
    assert pred.stable and math.isfinite(pred.ttft_p99_s)
    assert pred.ttft_p99_s >= prefill_alone_ms(profile, 25_200, 0) / 1000
    assert pred.ttft_p50_s >= prefill_alone_ms(profile, 2_800, 0) / 1000


@settings(max_examples=10, deadline=None)
@given(short=prompts, longer=st.integers(0, 3000), output=outputs, ttft=ttfts, target=targets)
def test_longer_prompts_never_more_capacity_with_a_mix(short, longer, output, ttft, target):
    slo = Slo(ttft_ms=ttft * 3, ttft_percentile=95)
    mix = ((0.5, 0.7), (2.2, 0.3))
    assert max_arrival_rate(SMALL, short + longer, output, slo, target, prompt_mix=mix) <= \
        max_arrival_rate(SMALL, short, output, slo, target, prompt_mix=mix)
