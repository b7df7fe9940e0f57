"""Collector, pure part: PromQL built on vLLM's metric names and the model_name label."""

from __future__ import annotations

import re

import pytest

from kiban.autoscale.collector import build_queries, label_selector, promql_duration

SELECTOR = 'model_name="llama",namespace="team-a"'


def test_selector_uses_model_name_label_and_namespace():
    assert label_selector("llama", "team-a") == SELECTOR
    assert label_selector("llama") == 'model_name="llama"'
    assert "model=" not in label_selector("llama", "ns").replace("model_name=", "")


def test_selector_escapes_quotes_and_backslashes():
    assert label_selector('we"ird\\name') == 'model_name="we\\"ird\\\\name"'


def test_selector_refuses_an_empty_model_name():
    with pytest.raises(ValueError, match="model_name"):
        label_selector("")


@pytest.mark.parametrize(("seconds", "text"), [(30, "30s"), (8.0, "8s"), (1.5, "1500ms"), (120, "120s")])
def test_durations(seconds, text):
    assert promql_duration(seconds) == text


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "30s"])
def test_bad_window_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match="window_s"):
        promql_duration(bad)


def test_every_query_selects_the_model_and_ranges_use_the_window():
    queries = build_queries(SELECTOR, 45)
    for key, promql in queries.items():
        assert SELECTOR in promql, key
        assert promql.count("(") == promql.count(")"), key
        for window in re.findall(r"\[([^\]]+)\]", promql):
            assert window == "45s", (key, promql)


def test_arrival_rate_counts_completions_and_growth_of_running_and_waiting():
    queries = build_queries(SELECTOR, 30)
    assert queries["completion_rate"] == f"sum(rate(vllm:request_success_total{{{SELECTOR}}}[30s]))"
    assert queries["in_engine_growth"] == (
        f"sum(delta(vllm:num_requests_running{{{SELECTOR}}}[30s])) + "
        f"sum(delta(vllm:num_requests_waiting{{{SELECTOR}}}[30s]))"
    )


def test_token_means_are_histogram_sum_over_count_rates():
    queries = build_queries(SELECTOR, 30)
    assert queries["mean_prompt_tokens"] == (
        f"sum(rate(vllm:request_prompt_tokens_sum{{{SELECTOR}}}[30s])) / "
        f"sum(rate(vllm:request_prompt_tokens_count{{{SELECTOR}}}[30s]))"
    )
    assert "vllm:request_generation_tokens_sum" in queries["mean_output_tokens"]
    assert "vllm:request_generation_tokens_count" in queries["mean_output_tokens"]


def test_ttft_p95_is_histogram_quantile_over_summed_bucket_rates():
    assert build_queries(SELECTOR, 30)["ttft_p95"] == (
        f"histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{SELECTOR}}}[30s])))"
    )


def test_running_waiting_and_kv_usage_read_both_names():
    queries = build_queries(SELECTOR, 30)
    assert queries["running"] == f"sum(vllm:num_requests_running{{{SELECTOR}}})"
    assert queries["waiting"] == f"sum(vllm:num_requests_waiting{{{SELECTOR}}})"
    assert "vllm:kv_cache_usage_perc" in queries["kv_cache_usage"]
    assert "vllm:gpu_cache_usage_perc" in queries["kv_cache_usage"]


def test_itl_reads_the_new_name_and_falls_back_to_the_old_one():
    itl = build_queries(SELECTOR, 30)["itl_by_engine"]
    for name in ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"):
        assert f"rate({name}_sum{{{SELECTOR}}}[30s])" in itl
        assert f"rate({name}_count{{{SELECTOR}}}[30s])" in itl
    assert itl.index("inter_token_latency") < itl.index("time_per_output_token")  # new name wins per series


def test_ttft_at_the_slo_percentile_is_histogram_quantile_at_that_percentile():
    queries = build_queries(SELECTOR, 30, ttft_percentiles=(99, 95))
    assert queries["ttft_p99"] == (
        f"histogram_quantile(0.99, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{SELECTOR}}}[30s])))"
    )
    assert queries["ttft_p95"] == build_queries(SELECTOR, 30)["ttft_p95"]  # 95 is not asked twice
    assert "ttft_p99" not in build_queries(SELECTOR, 30)


def test_prompt_mix_reuses_the_drift_prompt_bucket_query_over_the_token_window():
    from kiban.autoscale.collector import PROMPT_BUCKETS, build_drift_queries, optional_query
    from kiban.autoscale.engine_counters import COUNTERS

    queries = build_queries(SELECTOR, 30, token_window_s=600, ttft_percentiles=(99,))
    assert queries[PROMPT_BUCKETS] == (
        f"sum by (le) (increase(vllm:request_prompt_tokens_bucket{{{SELECTOR}}}[600s]))")
    assert queries[PROMPT_BUCKETS] == build_drift_queries(SELECTOR, 600)["prompt_tokens:buckets"]
    assert [k for k in queries if optional_query(k)] == [
        "kv_cache_usage", "batch_by_engine", "itl_by_engine", "ttft_p99", PROMPT_BUCKETS,
        *COUNTERS]  # after the required; the engine fit's per-engine counters last
    assert list(queries)[-2 - len(COUNTERS):-len(COUNTERS)] == ["ttft_p99", PROMPT_BUCKETS]
