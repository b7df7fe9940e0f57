"""The batched collector: one query per signal for every model, answers split per model, and
nothing a broken Prometheus or exporter says ever reaches the policy as a number."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from kiban.autoscale.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from kiban.autoscale.collector import (
    INVALID,
    NO_SERIES,
    QUERY_FAILED,
    STALE,
    UNREACHABLE,
    Collector,
    GuardedPrometheus,
    PrometheusUnavailable,
    Sample,
    Target,
    batch_drift_queries,
    batch_queries,
    collect_from_answers,
    drift_range_s,
    parse_vector,
    series_key,
)

# The PromQL subset the benchmark's evaluator answers (/work/notes/COORDINATION.md): functions
# and keywords it knows; anything else in a query is a word outside the subset.
SUBSET_WORDS = {"rate", "increase", "delta", "avg_over_time", "max_over_time", "sum", "max", "min", "count", "avg",
                "histogram_quantile", "by", "or", "le", "namespace", "model_name"}


def words_outside_the_subset(promql: str) -> set[str]:
    without_metrics = re.sub(r"vllm:[a-z_]+", "", promql)
    without_strings = re.sub(r'"[^"]*"', "", without_metrics)
    without_ranges = re.sub(r"\[[0-9]+m?s\]", "", without_strings)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", without_ranges))
    return words - SUBSET_WORDS


def test_one_query_per_signal_for_every_model_grouped_by_namespace_and_model_name():
    queries = batch_queries(60, 300, (99, 95))
    assert queries["completion_rate"] == "sum by (namespace, model_name) (rate(vllm:request_success_total[60s]))"
    assert queries["ttft_p99"] == ("histogram_quantile(0.99, sum by (le, namespace, model_name) "
                                   "(rate(vllm:time_to_first_token_seconds_bucket[60s])))")
    assert queries["prompt_buckets"] == ("sum by (le, namespace, model_name) "
                                         "(increase(vllm:request_prompt_tokens_bucket[300s]))")
    assert "[300s]" in queries["mean_prompt_tokens"]
    for key, promql in queries.items():
        assert "model_name=" not in promql, key  # no per-model matcher: the same query for 1 or 1,000 models
        assert "=~" not in promql and "!=" not in promql, key
        assert promql.count("(") == promql.count(")"), key
        assert not words_outside_the_subset(promql), (key, words_outside_the_subset(promql))
    for promql in batch_drift_queries(60).values():
        assert not words_outside_the_subset(promql), promql


def test_one_watched_namespace_narrows_every_query_with_an_equality_matcher():
    for promql in batch_queries(60, namespace="team-a").values():
        assert 'namespace="team-a"' in promql
    assert all("namespace" not in q for q in batch_queries(60, namespace_label=False).values()
               if "by (" not in q)
    assert "by (model_name)" in batch_queries(60, namespace_label=False)["running"]


def labelled(ns: str, model: str, value: float, **extra: str) -> Sample:
    return Sample({"namespace": ns, "model_name": model, **extra}, value)


def busy_answers():
    """Two models in two namespaces (same served name in both) and one nobody asked about."""
    a, b = ("team-a", "llama"), ("team-b", "llama")

    def both(va: float, vb: float) -> list[Sample]:
        return [labelled(*a, va), labelled(*b, vb), labelled("team-c", "stranger", 99.0)]

    return {
        "engines": both(2, 1),
        "completion_rate": both(3.0, 0.5),
        "in_engine_growth": both(6.0, -30.0),
        "mean_prompt_tokens": both(512.0, 100.0),
        "mean_output_tokens": both(64.0, 10.0),
        "running": both(10.0, 1.0),
        "waiting": both(4.0, 0.0),
        "ttft_p95": both(0.8, 0.1),
        "kv_cache_usage": both(0.5, 7.0),  # 7 is not a share: dropped, not fatal
        "batch_by_engine": [labelled(*a, 12.0, instance="p1:8000"), labelled(*b, 3.0, instance="p2:8000")],
        "itl_by_engine": [labelled(*a, 0.04, instance="p1:8000"), labelled(*b, 0.02, instance="p2:8000")],
        "prompt_buckets": [labelled(*a, 2.0, le="100.0"), labelled(*a, 4.0, le="+Inf")],
    }


TARGETS = [Target("team-a", "llama", 2, 2), Target("team-b", "llama", 1, 1), Target("team-a", "missing", 3, 3)]


def test_answers_are_split_per_model_and_a_model_without_series_has_no_metrics():
    out = collect_from_answers(busy_answers(), {}, TARGETS, time_s=100.0, window_s=30.0)
    assert set(out) == {("team-a", "llama"), ("team-b", "llama"), ("team-a", "missing")}
    a = out[("team-a", "llama")]
    # independent arithmetic: completions 3/s plus growth 6 over 30 s
    assert a.observation.metrics_available and a.observation.arrival_rate_rps == pytest.approx(3.2)
    assert (a.engines, a.kv_cache_usage, a.decode_pairs) == (2, 0.5, ((12.0, 40.0),))
    assert [v for pair in a.observation.prompt_mix for v in pair] == pytest.approx([50.0, 0.5, 100.0, 0.5])
    assert (a.observation.current_replicas, a.observation.ready_replicas) == (2, 2)
    b = out[("team-b", "llama")]
    assert b.observation.arrival_rate_rps == 0.0  # a draining engine: never a negative rate
    assert b.kv_cache_usage is None and b.observation.prompt_mix is None
    missing = out[("team-a", "missing")]
    assert missing.reason_code == NO_SERIES and missing.observation.current_replicas == 3


def test_a_failed_required_query_makes_every_model_unavailable_and_an_optional_one_only_its_field():
    down = PrometheusUnavailable(UNREACHABLE, "Prometheus at http://p is unreachable: ConnectTimeout")
    out = collect_from_answers({}, {"engines": down}, TARGETS, time_s=1.0, window_s=30.0)
    assert {c.reason_code for c in out.values()} == {UNREACHABLE}
    assert all("unreachable" in c.observation.reason_unavailable for c in out.values())
    answers = busy_answers()
    del answers["prompt_buckets"]
    bad = PrometheusUnavailable(QUERY_FAILED, "bad_data: boom")
    partial = collect_from_answers(answers, {"prompt_buckets": bad}, TARGETS, time_s=1.0, window_s=30.0)
    assert partial[("team-a", "llama")].observation.metrics_available
    assert partial[("team-a", "llama")].observation.prompt_mix is None


@pytest.mark.parametrize(("key", "value", "words"), [
    ("completion_rate", -5.0, "negative"),  # a counter's rate is never negative
    ("completion_rate", 1.22e14, "more than"),  # the sample that once held a model at maxReplicas
    ("completion_rate", math.inf, "not a number"),
    ("completion_rate", math.nan, "not a number"),
    ("in_engine_growth", -math.inf, "not a number"),
    ("in_engine_growth", 1e13, "growth"),
    ("mean_prompt_tokens", -1.0, "negative"),
    ("mean_output_tokens", 1e12, "more than"),
    ("running", -3.0, "negative"),
    ("waiting", 1e15, "more than"),
    ("engines", math.inf, "engine count"),
    ("engines", -1.0, "engine count"),
])
def test_values_no_engine_can_produce_make_metrics_unavailable(key, value, words):
    answers = busy_answers()
    answers[key] = [labelled("team-a", "llama", value)]
    collected = collect_from_answers(answers, {}, TARGETS[:1], time_s=1.0, window_s=30.0)[("team-a", "llama")]
    assert not collected.observation.metrics_available and collected.reason_code == INVALID
    assert words in collected.observation.reason_unavailable
    assert collected.observation.arrival_rate_rps is None


@pytest.mark.parametrize("value", [-0.2, math.inf, math.nan, 1e9])
def test_bad_optional_values_are_dropped_not_used(value):
    answers = busy_answers()
    answers["ttft_p95"] = [labelled("team-a", "llama", value)]
    answers["kv_cache_usage"] = [labelled("team-a", "llama", value)]
    collected = collect_from_answers(answers, {}, TARGETS[:1], time_s=1.0, window_s=30.0)[("team-a", "llama")]
    assert collected.observation.metrics_available
    assert collected.observation.observed_ttft_p95_s is None and collected.kv_cache_usage is None


class Table:
    """A PrometheusQuery answering from {query key: samples} by matching the batched PromQL."""

    def __init__(self, answers, queries, error=None, time_s=None):
        self.by_promql = {queries[k]: v for k, v in answers.items() if k in queries}
        self.error, self.asked, self.time_s = error, [], time_s

    def query(self, promql, time_s):
        self.asked.append(promql)
        if self.error is not None:
            raise self.error
        stamp = self.time_s if self.time_s is not None else time_s
        return [Sample(s.labels, s.value, stamp) for s in self.by_promql.get(promql, [])]


def test_collect_all_asks_each_query_once_whatever_the_number_of_models():
    collector = Collector(None, 30)
    queries = collector.queries(TARGETS)
    table = Table(busy_answers(), queries)
    collector.prometheus = table
    many = [Target("team-a", f"m{i}", 1) for i in range(500)] + TARGETS
    out = collector.collect_all(many, time_s=50.0)
    assert len(table.asked) == len(queries) and len(out) == 503
    assert out[("team-a", "llama")].observation.arrival_rate_rps == pytest.approx(3.2)


def test_collect_all_async_runs_every_query_through_the_runner():
    collector = Collector(None, 30)
    table = Table(busy_answers(), collector.queries(TARGETS))
    collector.prometheus = table
    ran = []

    async def run(fn):
        ran.append(fn)
        return fn()

    out = asyncio.run(collector.collect_all_async(TARGETS, time_s=50.0, run=run))
    assert len(ran) == len(table.asked) == len(collector.queries(TARGETS))
    assert out[("team-b", "llama")].observation.metrics_available


def test_an_answer_for_another_evaluation_time_is_stale():
    collector = Collector(None, 30)
    collector.prometheus = Table(busy_answers(), collector.queries(TARGETS), time_s=1000.0 - 600)
    out = collector.collect_all(TARGETS, time_s=1000.0)
    assert {c.reason_code for c in out.values()} == {STALE}
    assert "600 s away" in out[("team-a", "llama")].observation.reason_unavailable


def test_parse_vector_refuses_malformed_answers_and_keeps_the_evaluation_time():
    ok = {"status": "success", "data": {"resultType": "vector",
                                        "result": [{"metric": {"a": "1"}, "value": [1700000000.5, "2"]}]}}
    assert parse_vector(ok)[0].time_s == 1700000000.5
    for bad in ([], {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
                {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "x"]}]}},
                {"status": "success", "data": "garbage"}):
        with pytest.raises(PrometheusUnavailable) as caught:
            parse_vector(bad)
        assert caught.value.reason == QUERY_FAILED


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_breaker_opens_after_failures_in_a_row_and_probes_after_the_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown_s=10, max_cooldown_s=40, clock=clock)
    down = Table({}, {}, error=PrometheusUnavailable(UNREACHABLE, "down"))
    guarded = GuardedPrometheus(down, breaker)
    for _ in range(3):
        with pytest.raises(PrometheusUnavailable):
            guarded.query("up", 0)
    assert breaker.state == OPEN and len(down.asked) == 3
    with pytest.raises(PrometheusUnavailable, match="circuit open") as caught:
        guarded.query("up", 0)
    assert caught.value.reason == UNREACHABLE and len(down.asked) == 3  # not asked at all
    clock.now = 10.0
    assert breaker.state == HALF_OPEN
    with pytest.raises(PrometheusUnavailable, match="down"):  # the one probe goes out and fails
        guarded.query("up", 0)
    assert breaker.state == OPEN and breaker.current_cooldown_s == 20 and len(down.asked) == 4
    clock.now = 30.0
    down.error = None
    assert guarded.query("up", 0) == [] and breaker.state == CLOSED


def test_a_bad_query_does_not_open_the_breaker():
    breaker = CircuitBreaker(threshold=1)
    guarded = GuardedPrometheus(Table({}, {}, error=PrometheusUnavailable(QUERY_FAILED, "bad_data")), breaker)
    for _ in range(3):
        with pytest.raises(PrometheusUnavailable):
            guarded.query("x", 0)
    assert breaker.state == CLOSED


def test_drift_ranges_are_whole_seconds_so_models_due_together_share_queries():
    assert drift_range_s(60.02) == drift_range_s(59.7) == 60.0
    assert drift_range_s(0.2) == 1.0
    assert series_key("ns", "m", namespace_label=False) == ("", "m")
