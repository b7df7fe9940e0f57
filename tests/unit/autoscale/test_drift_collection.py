"""Drift in the autoscaler, pure parts: the histogram-window PromQL, its answers, the token
window, the operator-wide overrides and the status.drift patch."""

from __future__ import annotations

import pytest

from kiban.autoscale.collector import (
    UNREACHABLE,
    Collector,
    PrometheusUnavailable,
    Sample,
    build_drift_queries,
    build_queries,
    drift_series_from,
)
from kiban.autoscale.model_pass import AutoscaleSettings, drift_overrides, drift_status_patch
from kiban.config import ConfigError
from kiban.drift import tracker as drift
from kiban.drift.detector import DriftAssessment

SELECTOR = 'model_name="llama",namespace="team-a"'


def test_drift_queries_sum_bucket_increases_by_le_over_the_drift_window():
    queries = build_drift_queries(SELECTOR, 15)
    assert queries["prompt_tokens:buckets"] == (
        f"sum by (le) (increase(vllm:request_prompt_tokens_bucket{{{SELECTOR}}}[15s]))")
    assert queries["generation_tokens:sum"] == f"sum(increase(vllm:request_generation_tokens_sum{{{SELECTOR}}}[15s]))"
    assert queries["itl_seconds:buckets"] == (
        f"sum by (le) (increase(vllm:inter_token_latency_seconds_bucket{{{SELECTOR}}}[15s]) or "
        f"increase(vllm:time_per_output_token_seconds_bucket{{{SELECTOR}}}[15s]))")
    assert set(queries) == {f"{s}:{k}" for s in ("prompt_tokens", "generation_tokens", "itl_seconds")
                            for k in ("buckets", "sum")} | {"batch:per_engine"}
    assert queries["batch:per_engine"] == f"avg(avg_over_time(vllm:num_requests_running{{{SELECTOR}}}[15s]))"


def test_token_means_use_the_token_window_and_rates_keep_theirs():
    queries = build_queries(SELECTOR, 60, token_window_s=600)
    assert "[600s]" in queries["mean_prompt_tokens"] and "[60s]" not in queries["mean_prompt_tokens"]
    assert "[600s]" in queries["mean_output_tokens"]
    assert "[60s]" in queries["completion_rate"] and "[60s]" in queries["ttft_p95"]
    assert build_queries(SELECTOR, 60)["mean_prompt_tokens"] == build_queries(SELECTOR, 60, 60)["mean_prompt_tokens"]


def test_answers_become_series_per_signal_and_empty_signals_are_left_out():
    results = {
        "prompt_tokens:buckets": [Sample({"le": "100.0"}, 3.0), Sample({"le": "+Inf"}, 4.5),
                                  Sample({"le": "200.0"}, float("nan"))],
        "prompt_tokens:sum": [Sample({}, 420.0)],
        "generation_tokens:buckets": [],
        "itl_seconds:buckets": [Sample({"le": "0.05"}, 30.0), Sample({"le": "+Inf"}, 30.0)],
        "itl_seconds:sum": [],
        "batch:per_engine": [Sample({}, 6.5)],
    }
    series = drift_series_from(results, time_s=10.0, window_s=15.0)
    assert series.batch_per_engine == 6.5
    assert drift_series_from({**results, "batch:per_engine": [Sample({}, float("nan"))]},
                             time_s=10.0, window_s=15.0).batch_per_engine is None
    assert series.buckets == {"prompt_tokens": (("100.0", 3.0), ("+Inf", 4.5)),
                              "itl_seconds": (("0.05", 30.0), ("+Inf", 30.0))}
    assert series.sums == {"prompt_tokens": 420.0, "itl_seconds": None}
    assert series.reason_code is None


class Answers:
    """A PrometheusQuery that answers from a table (or fails), recording the queries."""

    def __init__(self, table=None, error=None):
        self.table, self.error, self.seen = table or {}, error, []

    def query(self, promql, time_s):
        self.seen.append((promql, time_s))
        if self.error:
            raise self.error
        return self.table.get(promql, [])


def test_collect_drift_queries_at_the_window_end_and_reports_trouble():
    from kiban.autoscale.collector import batch_drift_queries

    queries = batch_drift_queries(20)
    llama = {"namespace": "ns", "model_name": "llama"}
    other = {"namespace": "ns", "model_name": "other"}
    prometheus = Answers({queries["prompt_tokens:buckets"]: [Sample({**llama, "le": "+Inf"}, 9.0),
                                                             Sample({**other, "le": "+Inf"}, 1.0)],
                          queries["prompt_tokens:sum"]: [Sample(llama, 90.0), Sample(other, 5.0)]})
    series = Collector(prometheus, 8).collect_drift("llama", "ns", time_s=123.0, window_s=20)
    assert series.buckets == {"prompt_tokens": (("+Inf", 9.0),)} and series.sums == {"prompt_tokens": 90.0}
    assert {t for _, t in prometheus.seen} == {123.0} and len(prometheus.seen) == len(queries)

    down = Answers(error=PrometheusUnavailable(UNREACHABLE, "Prometheus at http://p is unreachable"))
    failed = Collector(down, 8).collect_drift("llama", "ns", time_s=1.0, window_s=20)
    assert failed.reason_code == UNREACHABLE and "unreachable" in failed.message and not failed.buckets


def test_overrides_come_from_the_environment_typed_and_checked():
    env = {"KIBAN_DRIFT_WINDOW_SECONDS": "15", "KIBAN_DRIFT_MIN_SAMPLES": "20", "KIBAN_TOKEN_WINDOW_SECONDS": "600",
           "KIBAN_DRIFT_PSI_THRESHOLD": "1.5"}
    assert drift_overrides(env) == {"drift_window_s": 15.0, "drift_min_samples": 20, "token_window_s": 600.0,
                                    "drift_psi_threshold": 1.5}
    assert drift_overrides({}) == {}
    with pytest.raises(ConfigError, match="KIBAN_DRIFT_MIN_SAMPLES"):
        drift_overrides({"KIBAN_DRIFT_MIN_SAMPLES": "many"})
    with pytest.raises(ConfigError, match="KIBAN_DRIFT_WINDOW_SECONDS"):
        drift_overrides({"KIBAN_DRIFT_WINDOW_SECONDS": "0"})


def test_token_window_defaults_to_the_policys_300_s_or_the_rate_window_if_longer():
    assert AutoscaleSettings("http://p", interval_s=15).tokens_window_s == 300
    assert AutoscaleSettings("http://p", interval_s=120).tokens_window_s == 480
    assert AutoscaleSettings("http://p", interval_s=15, token_window_s=600).tokens_window_s == 600


def assessment(reason="WorkloadDrift"):
    return DriftAssessment(end_time=1700000000.0, reports={}, workload_drift=reason == "WorkloadDrift",
                           service_time_drift=False, performance_regression=False,
                           refit_capacity_model=False, reason=reason, message="prompt_tokens drifted: PSI 1.2 > 0.75")


def test_status_patch_writes_drift_once_and_removes_it_when_drift_is_off():
    memory = drift.DriftMemory(assessment=assessment())
    patch, own = drift_status_patch({}, memory, 3)
    assert patch["drift"]["detected"] is True and patch["drift"]["message"].startswith("prompt_tokens drifted")
    assert own == [{"type": "DriftDetected", "status": "True", "reason": "WorkloadDrift",
                    "message": "prompt_tokens drifted: PSI 1.2 > 0.75", "observedGeneration": 3}]
    stored = {k: v for k, v in patch["drift"].items() if v is not None}
    assert drift_status_patch({"drift": stored}, memory, 3)[0] == {}  # unchanged: nothing to write
    assert drift_status_patch({}, drift.DriftMemory(), 3) == ({}, [])  # no window yet
    assert drift_status_patch({"drift": stored}, None, 3) == ({"drift": None}, [])
    assert drift_status_patch({}, None, 3) == ({}, [])
