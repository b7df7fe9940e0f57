"""The demo's load shape (phases over a real trace) and its bookkeeping."""

from __future__ import annotations

import math

import pytest

from kiban_dev.shared_paths import trace_path
from kiban_dev.demo.schedule import (
    Phase,
    parse_phases,
    ramp,
    scale_events,
    scale_events_from_api,
    ttft_p95_by_window,
    windowed_rate,
)
from kiban_serving.loadgen.client import RequestResult
from kiban_serving.loadgen.trace import TraceRequest, read_azure_trace

CONV = trace_path("conv.csv")


def steady_trace(rate_rps: float, seconds: float) -> list[TraceRequest]:
    step = 1.0 / rate_rps
    return [TraceRequest(i * step, 100 + i % 7, 20 + i % 5) for i in range(int(seconds * rate_rps))]


def test_each_phase_reaches_its_rate_and_keeps_the_token_mix():
    trace = steady_trace(5.0, 2000)
    phases = (Phase(100, 0.5), Phase(100, 2.0), Phase(100, 0.25))
    out = ramp(trace, phases, time_compression=4.0, seed=1)
    arrivals = [r.arrival_s for r in out]
    assert arrivals == sorted(arrivals)
    for index, phase in enumerate(phases):
        start = 100.0 * index
        count = sum(1 for t in arrivals if start <= t < start + phase.duration_s)
        assert count / phase.duration_s == pytest.approx(phase.rate_rps, rel=0.25)
    assert {(r.prompt_tokens, r.output_tokens) for r in out} <= {(r.prompt_tokens, r.output_tokens) for r in trace}


def test_ramp_walks_forward_through_the_trace():
    trace = [TraceRequest(float(t), t, 1) for t in range(0, 400)]  # prompt tokens = trace second
    out = ramp(trace, (Phase(50, 1.0), Phase(50, 1.0)), time_compression=4.0)
    first = [r.prompt_tokens for r in out if r.arrival_s < 50]
    second = [r.prompt_tokens for r in out if r.arrival_s >= 50]
    assert max(first) < 200 <= min(second)


def test_ramp_says_how_much_trace_it_needs():
    with pytest.raises(ValueError, match="covers 99 s; these phases need 400 s"):
        ramp(steady_trace(1.0, 100), (Phase(100, 1.0),), time_compression=4.0)


def test_ramp_rejects_a_bad_compression():
    with pytest.raises(ValueError, match="time_compression"):
        ramp(steady_trace(1.0, 100), (Phase(10, 1.0),), time_compression=0)


def test_ramp_over_the_real_conversation_trace():
    trace = read_azure_trace(CONV, max_rows=3000)
    out = ramp(trace, (Phase(60, 0.3), Phase(60, 1.5)), time_compression=2.0)
    low = sum(1 for r in out if r.arrival_s < 60)
    high = len(out) - low
    assert high > 2.5 * low > 0


def test_parse_phases():
    assert parse_phases("40:0.3, 60:1.5") == (Phase(40, 0.3), Phase(60, 1.5))
    with pytest.raises(ValueError, match="'40'"):
        parse_phases("40")
    with pytest.raises(ValueError, match="rate_rps"):
        parse_phases("40:-1")
    with pytest.raises(ValueError, match="at least one"):
        parse_phases(" ")


def test_windowed_rate():
    assert windowed_rate([1, 2, 3, 11, 12], end_s=12, window_s=10) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="window_s"):
        windowed_rate([], 1, 0)


def test_scale_events_from_samples():
    events = scale_events([(0, 1, "a"), (5, None, None), (10, 1, "b"), (15, 3, "up"), (20, 2, "down")])
    assert [(e.time_s, e.from_replicas, e.to_replicas, e.reason) for e in events] == [(15, 1, 3, "up"), (20, 3, 2, "down")]


def test_scale_events_from_the_operators_scaled_events_keep_each_reason():
    events = scale_events_from_api([
        (106.0, "Scaled from 1 to 2: λ=0.895 req/s → 2 replicas"),
        (2.5, "Scaled from 0 to 1: 1 requests held at the gateway with no replica → 1 replica now"),
        (50.0, "something else"),
    ])
    assert [(e.time_s, e.from_replicas, e.to_replicas) for e in events] == [(2.5, 0, 1), (106.0, 1, 2)]
    assert events[0].reason.startswith("1 requests held at the gateway") and events[1].reason.endswith("2 replicas")


def test_client_ttft_windows_count_a_request_when_its_first_token_came():
    def result(sent, ttft, ok=True):
        return RequestResult(0, sent, sent, 10, 10, ok=ok, ttft_s=ttft)

    windows = ttft_p95_by_window([result(1, 0.5), result(2, 12.0), result(3, 0.2, ok=False)], window_s=10)
    assert [(end, count) for end, _, count in windows] == [(10, 1), (20, 1)]
    assert windows[0][1] == pytest.approx(500.0)
    assert not math.isnan(windows[1][1])


def test_a_poisson_phase_keeps_the_mix_in_order_on_poisson_arrivals():
    from kiban_dev.demo.schedule import Phase as P, phase_at

    conv = steady_trace(1.0, 400)
    code = [TraceRequest(float(i), 5000 + i, 20) for i in range(300)]
    phases = (P(100, 0.5), P(100, 1.0, "code", poisson=True))
    out = ramp({"conv": conv, "code": code}, phases, time_compression=2.0, seed=3)
    tail = [r for r in out if r.arrival_s >= 100]
    assert [r.prompt_tokens for r in tail] == [5000 + i for i in range(len(tail))]  # the code rows, in order
    assert 70 <= len(tail) <= 130  # Poisson at 1 req/s for 100 s
    assert all(r.prompt_tokens < 5000 for r in out if r.arrival_s < 100)
    assert phase_at(phases, 150.0).mix == "code" and phase_at(phases, 250.0) is None


def test_gpu_hours_integrate_the_replica_steps():
    from kiban_dev.demo.schedule import gpu_hours

    # 1 replica for 1800 s, then 3 for 1800 s: 0.5 + 1.5 = 2 replica-hours, 2 GPUs each
    assert gpu_hours([(0.0, 1), (1800.0, 3)], 3600.0, 2) == pytest.approx(4.0)


def test_no_ready_windows_start_at_zero_for_a_model_applied_at_zero():
    from kiban_dev.demo.schedule import no_ready_windows

    assert no_ready_windows([], 100.0) == [(0.0, 100.0)]
    assert no_ready_windows([(12.5, 1), (50.0, 2), (80.0, 1)], 100.0) == [(0.0, 12.5)]


def test_no_ready_windows_take_the_count_before_the_load_and_later_gaps():
    from kiban_dev.demo.schedule import no_ready_windows

    assert no_ready_windows([(-3.0, 1)], 100.0) == []
    assert no_ready_windows([(-3.0, 1), (40.0, 0), (60.0, 1), (90.0, 0)], 100.0) == [(40.0, 60.0), (90.0, 100.0)]


def test_sent_in_picks_the_requests_sent_inside_a_window():
    from kiban_dev.demo.schedule import sent_in

    results = [RequestResult(i, t, t, 10, 10) for i, t in enumerate((0.0, 5.0, 12.5, 13.0))]
    assert [r.index for r in sent_in(results, [(0.0, 12.5)])] == [0, 1]
