"""Percentiles and SLO attainment of the load generator's report."""

from __future__ import annotations

import json
import math

import pytest

from kiban_serving.loadgen.client import RequestResult, chunk_has_token, parse_sse_data
from kiban_serving.loadgen.report import percentile, summarize


def result(i, ttft, itls, ok=True):
    r = RequestResult(i, float(i), float(i), 10, len(itls) + 1, ok=ok)
    if ok:
        r.ttft_s, r.itls_s, r.e2e_s, r.output_tokens = ttft, list(itls), ttft + sum(itls), len(itls) + 1
    return r


def test_percentile_matches_linear_interpolation():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert math.isnan(percentile([], 50))


def test_summary_percentiles_and_slo_attainment():
    results = [result(i, ttft=0.1 * (i + 1), itls=[0.01, 0.02]) for i in range(10)]
    results.append(result(10, 0, [], ok=False))
    report = summarize(results, slo_ttft_ms=500)
    assert report.requests == 11 and report.succeeded == 10 and report.failed == 1
    assert report.ttft.p50_ms == pytest.approx(550)
    assert report.itl.count == 20
    assert report.slo_attainment == pytest.approx(5 / 11)  # TTFT 100..500 ms meet it
    assert "TTFT" in report.to_table() and "SLO" in report.to_table()
    assert json.loads(json.dumps(report.to_dict()))["ttft"]["count"] == 10


def test_latency_scale_converts_to_engine_time_before_slo_check():
    report = summarize([result(0, 0.05, [0.01])], slo_ttft_ms=100, latency_scale=10)
    assert report.ttft.p50_ms == pytest.approx(500)
    assert report.slo_attainment == 0.0


def test_itl_slo_uses_each_requests_p95():
    fast, slow = result(0, 0.1, [0.01] * 20), result(1, 0.1, [0.01] * 10 + [0.5] * 10)
    assert summarize([fast, slow], slo_itl_ms=50).slo_attainment == 0.5


def test_sse_parsing():
    assert parse_sse_data(b"data: [DONE]\n") is None
    assert parse_sse_data(b"\n") is None
    obj = parse_sse_data(b'data: {"choices": [{"text": " a"}]}\n')
    assert chunk_has_token(obj, chat=False)
    assert not chunk_has_token({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, chat=True)
