"""The benchmark's Kiban observes as the operator does: the PromQL stand-in gives Prometheus's
answers (values worked out by hand from Prometheus 2.42's documented rules), and a fleet run
feeds the operator's own collector from the replicas' scraped vLLM series."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kiban.autoscale.collector import QUERY_FAILED, PrometheusUnavailable
from kiban.autoscale.learning import pod_starts
from kiban.autoscale.model_pass import Autoscaler
from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.benchmark.fleet import FleetConfig, simulate
from kiban_dev.benchmark.operator_policy import KibanPolicy, bench_model, operator_settings, pod_index_entries
from kiban_dev.benchmark.promql import PromQLStandIn, SampleStore
from kiban_dev.benchmark.traces import Trace


def counter_store(points: list[tuple[float, float]], name: str = "c") -> PromQLStandIn:
    store = SampleStore()
    for t, value in points:
        store.scrape_series("a", t, [({"__name__": name, "job": "x"}, value)])
    return PromQLStandIn(store)


def value(standin: PromQLStandIn, promql: str, t: float) -> float:
    (sample,) = standin.query(promql, t)
    return sample.value


def test_a_range_longer_than_the_kept_samples_is_refused_not_cut() -> None:
    from kiban.autoscale.collector import PrometheusUnavailable

    store = SampleStore(keep_s=600.0)
    for t in range(0, 1200, 15):
        store.scrape_series("a", float(t), [({"__name__": "c", "job": "x"}, float(t))])
    standin = PromQLStandIn(store)
    assert value(standin, "increase(c[600s])", 1185) > 0
    with pytest.raises(PrometheusUnavailable, match="600 s of samples"):
        standin.query("increase(c[1200s])", 1185)


def test_rate_extrapolates_to_the_range_edges_as_prometheus_does() -> None:
    # samples 5..50 s in a 60 s range ending at 60: 5 s to the start and 10 s to the end are both
    # under 1.1 x the 15 s average interval, so the 45 s sampled extrapolate to the full 60 s
    standin = counter_store([(5, 10), (20, 25), (35, 40), (50, 55)])
    assert value(standin, "increase(c[60s])", 60) == pytest.approx(60.0)
    assert value(standin, "rate(c[60s])", 60) == pytest.approx(1.0)


def test_rate_extrapolates_half_an_interval_past_a_gap() -> None:
    # the last sample is 25 s before the end (> 16.5 s): only half an average interval is added
    standin = counter_store([(5, 10), (20, 25), (35, 40)])
    assert value(standin, "increase(c[60s])", 60) == pytest.approx(30.0 * (30 + 5 + 7.5) / 30)


def test_counter_reset_and_zero_point_rule() -> None:
    reset = counter_store([(5, 10), (20, 25), (35, 5), (50, 20)])
    assert value(reset, "increase(c[60s])", 60) == pytest.approx((20 - 10 + 25) * 60 / 45)
    # a counter starting at 1 would have been 0 one second before its first sample: the
    # extrapolation to the start stops there (to_start 1 s instead of 10 s)
    young = counter_store([(30, 1), (45, 16), (60, 31), (75, 46)])
    assert value(young, "increase(c[60s])", 80) == pytest.approx(45.0 * (45 + 1 + 5) / 45)


def test_histogram_quantile_interpolates_in_its_bucket() -> None:
    store = SampleStore()
    for t, scale in ((0, 0), (15, 1)):
        store.scrape_series("a", t, [({"__name__": "h_bucket", "le": le}, count * scale)
                                     for le, count in (("0.1", 0), ("0.5", 10), ("1.0", 20), ("+Inf", 25))])
    standin = PromQLStandIn(store)
    assert value(standin, "histogram_quantile(0.5, sum by (le) (h_bucket))", 15) == pytest.approx(0.5 + 0.5 * 2.5 / 10)
    # rank 24.75 of 25 lies in +Inf: the highest finite bound
    assert value(standin, "histogram_quantile(0.99, sum by (le) (h_bucket))", 15) == pytest.approx(1.0)


def test_sum_by_division_or_and_staleness() -> None:
    store = SampleStore()
    for t in (0.0, 15.0):
        for target, (running, model) in {"p1": (3, "m"), "p2": (5, "m"), "p3": (7, "n")}.items():
            store.scrape_series(target, t, [({"__name__": "g", "model_name": model, "instance": target}, running)])
    standin = PromQLStandIn(store)
    sums = {s.labels["model_name"]: s.value for s in standin.query("sum by (model_name) (g)", 20)}
    assert sums == {"m": 8.0, "n": 7.0}
    ratio = {s.labels["model_name"]: s.value
             for s in standin.query("sum by (model_name) (g) / count by (model_name) (g)", 20)}
    assert ratio == {"m": 4.0, "n": 7.0}
    assert len(standin.query("g or missing", 20)) == 3
    store.drop("p3", 16.0)  # the pod went away: Prometheus marks its series stale
    assert {s.labels["model_name"] for s in standin.query("g", 20)} == {"m"}
    assert {s.labels["model_name"] for s in standin.query("max_over_time(g[60s])", 20)} == {"m", "n"}


@pytest.mark.parametrize("promql", ["topk(1, g)", "g offset 1m", "absent(g)", "g > 1"])
def test_what_the_standin_cannot_evaluate_fails_loudly(promql: str) -> None:
    store = SampleStore()
    store.scrape_series("a", 0.0, [({"__name__": "g"}, 1.0)])
    with pytest.raises(PrometheusUnavailable) as info:
        PromQLStandIn(store).query(promql, 1.0)
    assert info.value.reason == QUERY_FAILED


def test_pods_reach_the_learning_in_whole_seconds_as_the_api_server_writes_them() -> None:
    starts = pod_starts(pod_index_entries(((12.7, 140.2), (30.0, None))))
    assert [(p.created_s, p.ready_s) for p in starts] == [(12.0, 140.0), (30.0, None)]


class Recording(KibanPolicy):
    """KibanPolicy that keeps what its collector gave at every tick."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.seen = []

    def desired_replicas(self, view) -> int:
        replicas = super().desired_replicas(view)
        self.seen.append((view.now_s, self.last_collected))
        return replicas


def test_kiban_observes_the_fleet_through_the_operators_collector() -> None:
    rate, prompt, output = 2.0, 500, 50
    n = int(900 * rate)
    trace = Trace("steady", np.arange(n) / rate, np.full(n, prompt), np.full(n, output))
    profile = get_profile_by_name("nvidia-a100-80gb/8B")
    policy = Recording(model=bench_model(profile.name, 2000, 1, 8), gpus_per_replica=1)
    config = FleetConfig(profile=profile, initial_replicas=2, max_replicas=8, cold_start_s=90.0, scrape_phase_s=3.0)
    result = simulate(trace, config, policy)

    # the operator's own windows and interval (what Autoscaler.from_settings would collect with)
    production = Autoscaler.from_settings(operator_settings()).collector
    assert (policy._collector.window_s, policy._collector.token_window_s) == (production.window_s,
                                                                               production.token_window_s)
    assert policy.interval_s == 15.0 and production.window_s == 60.0
    # a replica removed within the last rate window (+ one scrape) has a series that ends inside
    # the range, which rate() extrapolates only half an interval past: Prometheus reads less there
    changes = [t for t, _, _ in result.timeline[1:]]
    steady = [(t, c) for t, c in policy.seen if 120.0 <= t <= 880.0 and not any(t - 75.0 < x <= t for x in changes)]
    assert len(steady) >= 30
    for t, collected in steady:
        obs = collected.observation
        assert obs.metrics_available, (t, obs.reason_unavailable)
        # the trace's own numbers: 2 req/s, every prompt 500 tokens, every output 50
        assert obs.arrival_rate_rps == pytest.approx(rate, rel=0.05), t
        assert obs.mean_prompt_tokens == pytest.approx(prompt) and obs.mean_output_tokens == pytest.approx(output)
        assert obs.observed_ttft_p95_s is not None and 0 < obs.observed_ttft_p95_s < 2.0
        assert obs.current_replicas >= 1 and obs.ready_replicas >= 1
        assert len(collected.engine_windows) == obs.ready_replicas
        assert all(math.isfinite(w.itl_sum_s) and w.steps > 0 for w in collected.engine_windows)
    assert policy.learned is not None and policy.learned.fit is not None
