"""Founding M/M/1 calculator and Erlang C against the worked values of capacity-model.md."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from kiban.capacity import erlang
from kiban.capacity.founding import mm1, plan_founding, service_rate_per_hour, supportable_users


def test_founding_worked_example_supports_70_users():
    plan = plan_founding(processing_minutes=5, utilization=0.7, hours_per_day=10,
                         access_probability=0.3, jobs_per_user=2, peak_factor=2)
    assert plan.service_rate_per_hour == pytest.approx(12.0)
    assert plan.users_exact == pytest.approx(70.0)
    assert plan.users == 70
    assert plan.arrival_rate_per_hour == pytest.approx(8.4)
    assert plan.mean_wait_minutes == pytest.approx(11.6667, abs=1e-3)
    assert plan.mean_time_in_system_minutes == pytest.approx(16.6667, abs=1e-3)
    assert plan.mean_queue_length == pytest.approx(1.6333, abs=1e-3)


def test_mm1_worked_example_in_hours():
    queue = mm1(arrival_rate=8.4, service_rate=12.0)
    assert queue.utilization == pytest.approx(0.7)
    assert queue.mean_wait * 60 == pytest.approx(11.6667, abs=1e-3)
    assert queue.mean_time_in_system * 60 == pytest.approx(16.6667, abs=1e-3)
    assert queue.mean_queue_length == pytest.approx(1.6333, abs=1e-3)
    # Little's law ties the figures together: L_q = lambda W_q
    assert queue.mean_queue_length == pytest.approx(queue.arrival_rate * queue.mean_wait)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(utilization=1.0), "utilization"),
        (dict(utilization=0.0), "utilization"),
        (dict(access_probability=1.5), "access_probability"),
        (dict(jobs_per_user=0), "jobs_per_user"),
        (dict(peak_factor=0.5), "peak_factor"),
        (dict(hours_per_day=25), "hours_per_day"),
        (dict(processing_minutes=-1), "processing_minutes"),
    ],
)
def test_founding_rejects_bad_input_naming_the_field(kwargs, field):
    args = dict(processing_minutes=5, utilization=0.7, hours_per_day=10, access_probability=0.3,
                jobs_per_user=2, peak_factor=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        plan_founding(**args)


def test_mm1_rejects_an_unstable_queue():
    with pytest.raises(ValueError, match="arrival_rate"):
        mm1(12.0, 12.0)


def test_users_scale_linearly_with_hours_and_inversely_with_peak():
    base = supportable_users(service_rate_per_hour(5), 0.7, 10, 0.3, 2, 2)
    assert supportable_users(service_rate_per_hour(5), 0.7, 20, 0.3, 2, 2) == pytest.approx(2 * base)
    assert supportable_users(service_rate_per_hour(5), 0.7, 10, 0.3, 2, 4) == pytest.approx(base / 2)


def test_erlang_c_worked_example():
    assert erlang.wait_probability(2, 1, 3) == pytest.approx(4 / 9, abs=1e-4)
    assert erlang.mean_wait(2, 1, 3) == pytest.approx(4 / 9, abs=1e-4)
    assert erlang.utilization(2, 1, 3) == pytest.approx(2 / 3)


def test_erlang_c_with_one_server_is_mm1():
    assert erlang.wait_probability(8.4, 12, 1) == pytest.approx(0.7)
    assert erlang.mean_wait(8.4, 12, 1) == pytest.approx(mm1(8.4, 12).mean_wait)


def test_erlang_b_matches_the_closed_form_for_small_c():
    a, c = 2.5, 4
    closed = (a**c / math.factorial(c)) / sum(a**k / math.factorial(k) for k in range(c + 1))
    assert erlang.erlang_b(c, a) == pytest.approx(closed)


def test_erlang_c_is_stable_for_thousands_of_servers():
    # a^c / c! would overflow a float long before c = 5000; the recursion does not
    p_wait = erlang.wait_probability(4900.0, 1.0, 5000)
    assert 0.0 < p_wait < 1.0
    # a Poisson(a) comparison: Erlang B = P(N = c) / P(N <= c) for N ~ Poisson(a)
    expected_b = stats.poisson.pmf(5000, 4900) / stats.poisson.cdf(5000, 4900)
    assert erlang.erlang_b(5000, 4900.0) == pytest.approx(expected_b, rel=1e-6)


def test_wait_tail_and_percentile_are_inverse():
    t95 = erlang.wait_percentile(2, 1, 3, 95)
    assert erlang.wait_tail(2, 1, 3, t95) == pytest.approx(0.05)
    assert erlang.wait_tail(2, 1, 3, 0.0) == pytest.approx(erlang.wait_probability(2, 1, 3))


def test_percentile_is_zero_when_few_arrivals_wait():
    assert erlang.wait_probability(0.5, 1, 3) < 0.5
    assert erlang.wait_percentile(0.5, 1, 3, 50) == 0.0


def test_servers_needed_is_the_smallest_meeting_the_target():
    c = erlang.servers_needed(20.0, 1.0, wait_target=0.1, percentile=95)
    assert erlang.wait_percentile(20.0, 1.0, c, 95) <= 0.1
    assert c > 21  # 21 servers are stable but too slow for this target
    assert erlang.wait_percentile(20.0, 1.0, c - 1, 95) > 0.1


def test_erlang_rejects_bad_input():
    with pytest.raises(ValueError, match="servers"):
        erlang.wait_probability(1, 1, 0)
    with pytest.raises(ValueError, match="arrival_rate"):
        erlang.wait_probability(3, 1, 3)
    with pytest.raises(ValueError, match="percentile"):
        erlang.wait_percentile(2, 1, 3, 100)
