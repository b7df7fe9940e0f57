"""The capacity model against the simulator engine, both in simulated time (no clock is read).

The engine (kiban_serving.sim.engine) is stepped through Poisson arrivals with fixed seeds by
the harness in kiban_dev.benchmark.model_vs_engine, at 30 %, 60 % and 85 % of the model's own capacity
at 75 % utilisation. Before the step chain, p95 TTFT came out 35-65 % under the engine's (an
arrival waiting out another prompt's prefill step was not modelled); these tolerances are
what the model now holds, with room for the sampling noise of a few thousand requests.
"""

from __future__ import annotations

import pytest

from kiban.capacity.batching import Slo, max_arrival_rate, predict
from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.benchmark import model_vs_engine as harness
from kiban_serving.sim.engine import Engine

REQUESTS = 3000  # per load point; the first 10 % warm the engine up
TTFT_P50_TOLERANCE = 0.10
TTFT_P95_TOLERANCE = 0.12
ITL_P95_TOLERANCE = 0.15


CASES = [(profile, "fixed", share) for profile in harness.PROFILES for share in range(3)] + [
    (profile, "conv", 1) for profile in harness.PROFILES  # the trace's mix at 60 %
]


@pytest.fixture(scope="module")
def conv_shape():
    if not harness.CONV_TRACE.exists():
        pytest.fail(f"the Azure conv trace is missing at {harness.CONV_TRACE}", pytrace=False)
    return harness.conv_shape()


@pytest.mark.parametrize("profile_name, shape_name, share_index", CASES)
def test_model_percentiles_agree_with_the_engine(profile_name, shape_name, share_index, request):
    shape = harness.fixed_shape() if shape_name == "fixed" else request.getfixturevalue("conv_shape")
    rate = harness.load_points(profile_name, shape)[share_index]
    workload = harness.poisson_workload(shape, rate, REQUESTS, seed=11)
    engine = harness.run_engine(profile_name, workload, warmup=REQUESTS // 10)
    model = harness.model_at(profile_name, shape, rate)
    row = harness.Row(profile_name, shape.name, harness.LOAD_SHARES[share_index], rate, engine, model)
    errors = row.errors()
    table = harness.table([row])
    assert abs(errors["ttft_p50"]) <= TTFT_P50_TOLERANCE, table
    assert abs(errors["ttft_p95"]) <= TTFT_P95_TOLERANCE, table
    assert abs(errors["itl_p95"]) <= ITL_P95_TOLERANCE, table


def test_harness_measures_a_lone_request_exactly():
    # one request on an idle engine: TTFT is one prefill step, ITL one decode step of batch 1
    profile = get_profile_by_name("nvidia-h100-80gb/8B")
    measured = harness.run_engine(profile.name, [(0.0, 1000, 50), (100.0, 1000, 50)], warmup=0)
    assert measured.ttft_p95 == pytest.approx(profile.gamma_ms + profile.delta_ms * 1000)
    assert measured.itl_p95 == pytest.approx(profile.alpha_ms + profile.beta_ms)
    assert Engine(profile).step_time_s(0, 1000) * 1e3 == pytest.approx(measured.ttft_p50)


def test_load_points_are_shares_of_the_utilisation_capped_capacity():
    shape = harness.fixed_shape()
    profile = get_profile_by_name("nvidia-l4/8B")
    capacity = max_arrival_rate(profile, 1000, 130, Slo(), harness.TARGET_UTILIZATION)
    rates = harness.load_points(profile.name, shape)
    assert rates == pytest.approx([share * capacity for share in harness.LOAD_SHARES])
    assert predict(profile, rates[-1], 1000, 130).utilization == pytest.approx(0.85 * 0.75, rel=2e-3)  # 0.17 % search grid


def test_conv_mix_keeps_the_trace_mean(conv_shape):
    mix = conv_shape.prompt_mix
    assert sum(p for _, p in mix) == pytest.approx(1.0)
    assert sum(t * p for t, p in mix) == pytest.approx(conv_shape.mean_prompt, rel=1e-9)
    assert max(t for t, _ in mix) > 2048  # the trace has prompts the engine must chunk
