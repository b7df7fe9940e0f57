"""The clairvoyant reference: the oracle's counts ordered one cold start ahead, and the bar
reading it as a yardstick, never as a peer (milliseconds)."""

from __future__ import annotations

import numpy as np
import pytest

from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.benchmark.fleet import FleetConfig, simulate
from kiban_dev.benchmark.oracle import ClairvoyantSchedule, schedule_ahead
from kiban_dev.benchmark.report import bar_check, markdown
from kiban_dev.benchmark.run import BenchConfig, Row
from kiban_dev.benchmark.traces import Trace

A100 = get_profile_by_name("nvidia-a100-80gb/8B")


def test_a_rise_is_ordered_one_lead_early() -> None:
    counts = (1, 1, 1, 4, 4)
    asked = [schedule_ahead(counts, 60.0, 120.0, t) for t in (0.0, 60.0, 120.0, 180.0)]
    assert asked == [1, 4, 4, 4]  # needed from 180 s, ordered at 60 s
    assert schedule_ahead(counts, 60.0, 0.0, 120.0) == 1  # no lead: only the current interval


def test_a_dip_shorter_than_a_lead_is_bridged_a_longer_one_is_not() -> None:
    short = (5, 1, 1, 5)
    assert [schedule_ahead(short, 60.0, 120.0, t) for t in (0.0, 60.0, 120.0, 180.0)] == [5, 5, 5, 5]
    long = (5, 1, 1, 1, 5)
    assert [schedule_ahead(long, 60.0, 120.0, t) for t in (0.0, 60.0, 120.0)] == [5, 1, 5]


def test_times_past_the_end_read_the_last_interval() -> None:
    assert schedule_ahead((2, 3), 60.0, 120.0, 60.0) == 3
    assert schedule_ahead((3, 2), 60.0, 120.0, 600.0) == 2
    with pytest.raises(ValueError, match="empty"):
        schedule_ahead((), 60.0, 120.0, 0.0)


def test_a_lead_between_intervals_is_rounded_up_to_the_earlier_ask() -> None:
    schedule = ClairvoyantSchedule(counts=(1, 1, 1, 4), interval_s=60.0, lead_s=90.0)
    assert schedule.ordering_lead_s == 120.0  # at 120 s a 90 s start would be ready too late
    assert [schedule.at(t) for t in (0.0, 60.0, 120.0)] == [1, 4, 4]


def test_the_schedule_drives_a_fleet_that_is_ready_on_time() -> None:
    trace = Trace("one-late", np.array([190.0]), np.array([100]), np.array([10]))
    schedule = ClairvoyantSchedule(counts=(1, 1, 1, 3), interval_s=60.0, lead_s=120.0)
    config = FleetConfig(profile=A100, cold_start_s=120.0, initial_replicas=schedule.at(0.0))
    result = simulate(trace, config, schedule)
    assert (60.0, 3, 1) in result.timeline and (180.0, 3, 3) in result.timeline
    assert result.gpu_seconds == pytest.approx(240.0 + 2 * 180.0)


def row(family: str, gpu_hours: float, attainment: float = 0.995, policy: str = "") -> Row:
    return Row(trace="t", family=family, policy=policy or family, gpu_hours=gpu_hours,
               ttft_slo_attainment=attainment, p95_ttft_s=0.5, p99_ttft_s=1.0, p95_tpot_s=0.02,
               scale_events=1, max_replicas=4, mean_replicas=2.0)


def test_bar_reports_the_clairvoyant_ratio_and_never_takes_it_as_a_peer() -> None:
    rows = [row("oracle", 10.0), row("clairvoyant", 13.0), row("kiban", 11.5), row("kubeai", 15.0)]
    check = bar_check(rows, "t", BenchConfig())
    assert check["cheapest_peer"] == "kubeai"  # the cheaper clairvoyant row is not a peer
    assert check["kiban_over_cheapest_peer"] == round(11.5 / 15.0, 3)
    assert check["clairvoyant_gpu_hours"] == 13.0 and check["clairvoyant_attainment"] == 0.995
    assert check["clairvoyant_over_oracle"] == 1.3
    assert check["oracle_bar_reachable_with_foresight"] is False
    assert check["within_1_2x_oracle"] is True and check["oracle_below_every_run"] is True
    assert "clairvoyant_over_oracle=1.3" in markdown(rows, BenchConfig())
    reachable = bar_check([row("oracle", 10.0), row("clairvoyant", 11.0), row("kiban", 11.5)], "t", BenchConfig())
    assert reachable["oracle_bar_reachable_with_foresight"] is True and "cheapest_peer" not in reachable
    # cheap enough but missing the SLO (queues carried between intervals) is not reachable
    missed = bar_check([row("oracle", 10.0), row("clairvoyant", 11.0, attainment=0.97), row("kiban", 11.5)],
                       "t", BenchConfig())
    assert missed["oracle_bar_reachable_with_foresight"] is False
