"""Collector, pure part: Prometheus answers → samples → the policy's Observation (fail safe)."""

from __future__ import annotations

import math

import pytest

from kiban.autoscale.collector import (
    INVALID,
    NO_SERIES,
    QUERY_FAILED,
    PrometheusUnavailable,
    Sample,
    decode_pairs,
    observation_from,
    parse_vector,
    single_value,
)


def vector(*items: tuple[dict, str]) -> dict:
    return {"status": "success", "data": {"resultType": "vector",
                                          "result": [{"metric": m, "value": [1700000000.0, v]} for m, v in items]}}


def test_vector_values_become_floats_including_nan_and_inf():
    samples = parse_vector(vector(({"le": "0.1"}, "3.5"), ({}, "NaN"), ({"x": "1"}, "+Inf")))
    assert samples[0] == Sample({"le": "0.1"}, 3.5)
    assert math.isnan(samples[1].value)
    assert samples[2].value == math.inf


def test_scalar_answers_are_one_sample():
    assert parse_vector({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "2"]}}) == [
        Sample({}, 2.0)
    ]


def test_error_answer_raises_with_prometheus_message():
    with pytest.raises(PrometheusUnavailable, match="bad_data: parse error") as caught:
        parse_vector({"status": "error", "errorType": "bad_data", "error": "parse error"})
    assert caught.value.reason == QUERY_FAILED


def test_matrix_answer_is_refused():
    with pytest.raises(PrometheusUnavailable, match="instant vector"):
        parse_vector({"status": "success", "data": {"resultType": "matrix", "result": []}})


def test_single_value_of_empty_vector_is_none():
    assert single_value([]) is None
    assert single_value([Sample({}, 4.0)]) == 4.0


def observe(values: dict, window_s: float = 30.0):
    return observation_from(values, time_s=100.0, window_s=window_s, current_replicas=2, ready_replicas=1,
                            model_name="llama")


BUSY = {"engines": 2.0, "completion_rate": 3.0, "in_engine_growth": 6.0, "mean_prompt_tokens": 512.0,
        "mean_output_tokens": 64.0, "running": 10.0, "waiting": 4.0, "ttft_p95": 0.8}


def test_busy_model_gives_arrival_rate_completions_plus_growth_per_second():
    observation, reason = observe(BUSY)
    assert reason is None and observation.metrics_available
    assert observation.arrival_rate_rps == pytest.approx(3.0 + 6.0 / 30.0)
    assert observation.rate_window_s == 30.0  # the policy prices bursts over the window measured
    assert (observation.mean_prompt_tokens, observation.mean_output_tokens) == (512.0, 64.0)
    assert (observation.running, observation.waiting, observation.observed_ttft_p95_s) == (10.0, 4.0, 0.8)
    assert (observation.current_replicas, observation.ready_replicas, observation.time_s) == (2, 1, 100.0)


def test_draining_engine_never_gives_a_negative_rate():
    observation, _ = observe({**BUSY, "completion_rate": 0.1, "in_engine_growth": -30.0})
    assert observation.arrival_rate_rps == 0.0


def test_idle_model_is_available_with_zero_rate_and_no_token_means():
    observation, reason = observe({"engines": 1.0, "completion_rate": 0.0, "in_engine_growth": 0.0,
                                   "mean_prompt_tokens": math.nan, "mean_output_tokens": math.nan,
                                   "running": 0.0, "waiting": 0.0, "ttft_p95": math.nan})
    assert reason is None and observation.metrics_available
    assert observation.arrival_rate_rps == 0.0
    assert observation.mean_prompt_tokens is None and observation.observed_ttft_p95_s is None


def test_engine_without_any_finished_request_counts_as_zero_completions():
    observation, _ = observe({"engines": 1.0, "completion_rate": None, "in_engine_growth": 3.0, "running": 3.0})
    assert observation.metrics_available and observation.arrival_rate_rps == pytest.approx(0.1)


@pytest.mark.parametrize("engines", [None, 0.0])
def test_no_engine_series_is_unavailable_naming_the_model(engines):
    observation, reason = observe({"engines": engines})
    assert not observation.metrics_available and reason == NO_SERIES
    assert "model_name='llama'" in observation.reason_unavailable
    assert observation.arrival_rate_rps is None


@pytest.mark.parametrize("field", ["completion_rate", "in_engine_growth"])
def test_nan_rate_is_unavailable(field):
    observation, reason = observe({**BUSY, field: math.nan})
    assert not observation.metrics_available and reason == INVALID
    assert "not a number" in observation.reason_unavailable


def test_nan_gauge_is_unavailable_naming_it():
    observation, reason = observe({**BUSY, "waiting": math.nan})
    assert reason == INVALID and "vllm:num_requests_waiting" in observation.reason_unavailable


def test_decode_pairs_join_batch_and_itl_per_engine_in_milliseconds():
    a = {"instance": "10.0.0.1:8000", "engine": "0", "namespace": "ns"}
    b = {"instance": "10.0.0.2:8000", "engine": "0", "namespace": "ns"}
    idle = {"instance": "10.0.0.3:8000", "engine": "0", "namespace": "ns"}
    batches = [Sample(a, 12.0), Sample(b, 3.0), Sample(idle, 0.0)]
    itls = [Sample(a, 0.040), Sample(b, 0.020), Sample(idle, math.nan),
            Sample({"instance": "gone:8000", "engine": "0", "namespace": "ns"}, 0.05)]
    assert decode_pairs(batches, itls) == ((3.0, 20.0), (12.0, 40.0))


def flat(pairs):
    return [v for pair in pairs for v in pair] if pairs is not None else None


def test_prompt_mix_is_bucket_midpoints_with_inf_at_the_highest_bound_normalised():
    from kiban.autoscale.collector import prompt_mix_from

    buckets = [Sample({"le": "+Inf"}, 10.0), Sample({"le": "100.0"}, 2.0), Sample({"le": "500.0"}, 8.0),
               Sample({"le": "1000.0"}, 8.0)]
    # (0,100] → 50; (100,500] → 300; (500,1000] empty; +Inf → 1000
    assert flat(prompt_mix_from(buckets)) == pytest.approx([50.0, 0.2, 300.0, 0.6, 1000.0, 0.2])


def test_prompt_mix_evens_out_increase_noise_between_neighbouring_buckets():
    from kiban.autoscale.collector import prompt_mix_from

    mix = prompt_mix_from([Sample({"le": "100.0"}, 4.0001), Sample({"le": "200.0"}, 4.0), Sample({"le": "+Inf"}, 8.0)])
    assert flat(mix) == pytest.approx([50.0, 0.5, 200.0, 0.5], rel=1e-4)


@pytest.mark.parametrize("buckets", [
    [],  # no series
    [Sample({"le": "100.0"}, 0.0), Sample({"le": "+Inf"}, 0.0)],  # no request in the window
    [Sample({"le": "100.0"}, 3.0)],  # no +Inf bucket
    [Sample({"le": "+Inf"}, 3.0)],  # no finite bound to place the +Inf bucket at
    [Sample({"le": "100.0"}, float("nan")), Sample({"le": "+Inf"}, float("nan"))],
])
def test_prompt_mix_without_usable_buckets_is_none(buckets):
    from kiban.autoscale.collector import prompt_mix_from

    assert prompt_mix_from(buckets) is None


def test_ttft_at_the_slo_percentile_and_prompt_mix_fill_the_observation():
    mix = ((50.0, 0.5), (300.0, 0.5))
    observation, _ = observation_from({**BUSY, "ttft_p99": 1.4}, time_s=100.0, window_s=30.0, current_replicas=2,
                                      ready_replicas=1, model_name="llama", ttft_slo_percentile=99, prompt_mix=mix)
    assert (observation.observed_ttft_slo_percentile_s, observation.prompt_mix) == (1.4, mix)
    missing, _ = observation_from({**BUSY, "ttft_p99": float("nan")}, time_s=100.0, window_s=30.0,
                                  current_replicas=2, ready_replicas=1, model_name="llama", ttft_slo_percentile=99)
    assert missing.metrics_available and missing.observed_ttft_slo_percentile_s is None and missing.prompt_mix is None
    assert observe(BUSY)[0].observed_ttft_slo_percentile_s is None


LLAMA = {"namespace": "ns", "model_name": "llama"}


class _Answers:
    """A PrometheusQuery answering every query with one value for llama in ns (batched answers
    carry the grouping labels), failing the ones named in `fail`."""

    def __init__(self, fail=()):
        self.fail = fail

    def query(self, promql, time_s):
        if any(text in promql for text in self.fail):
            raise PrometheusUnavailable(QUERY_FAILED, "bad_data: boom")
        if "request_prompt_tokens_bucket" in promql:
            return [Sample({**LLAMA, "le": "100.0"}, 1.0), Sample({**LLAMA, "le": "+Inf"}, 4.0)]
        if "histogram_quantile(0.99" in promql:
            return [Sample(LLAMA, 1.2)]
        return [Sample(LLAMA, 2.0)]


def test_collect_fills_the_optional_fields_and_their_failures_leave_them_none():
    from kiban.autoscale.collector import Collector

    collected = Collector(_Answers(), 30).collect("llama", "ns", time_s=1.0, current_replicas=1, ready_replicas=1,
                                                  ttft_percentiles=(99,))
    assert collected.observation.metrics_available
    assert collected.observation.observed_ttft_slo_percentile_s == 1.2 and collected.ttft_slo_s == {99: 1.2}
    assert flat(collected.observation.prompt_mix) == pytest.approx([50.0, 0.25, 100.0, 0.75])
    both = Collector(_Answers(), 30).collect("llama", "ns", time_s=1.0, current_replicas=1, ready_replicas=1,
                                             ttft_percentiles=(95, 99))
    assert both.ttft_slo_s == {95: 2.0, 99: 1.2} and both.observation.observed_ttft_slo_percentile_s is None

    failing = Collector(_Answers(fail=("histogram_quantile(0.99", "request_prompt_tokens_bucket")), 30).collect(
        "llama", "ns", time_s=1.0, current_replicas=1, ready_replicas=1, ttft_percentiles=(99,))
    assert failing.observation.metrics_available and failing.reason_code is None
    assert failing.observation.observed_ttft_slo_percentile_s is None and failing.observation.prompt_mix is None
