"""Traces, observations, the oracle and the CLI on small synthetic inputs (milliseconds to
seconds); the real traces are exercised by tests/integration/test_bench_quick.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.benchmark import cli
from kiban_dev.benchmark.fleet import FleetConfig, simulate
from kiban_dev.benchmark.observe import Counters, Gauges, histogram_quantile, observe
from kiban_dev.benchmark.oracle import fewest_replicas, oracle
from kiban_dev.benchmark.peers import StaticPolicy
from kiban_dev.benchmark.traces import Trace, concatenate, load_azure_trace, scale_rate

A100 = get_profile_by_name("nvidia-a100-80gb/8B")


def write_azure(path: Path, rate_rps: float, duration_s: float, seed: int) -> Path:
    """A synthetic Azure-format trace (the real ones are never copied)."""
    rng = np.random.default_rng(seed)
    t, rows = 0.0, ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    while t < duration_s:
        seconds = 46 + t
        whole = int(seconds)
        rows.append(f"2023-11-16 18:{15 + whole // 60:02d}:{whole % 60:02d}.{int((seconds - whole) * 1e7):07d},"
                    f"{rng.integers(50, 2000)},{rng.integers(5, 300)}")
        t += rng.exponential(1.0 / rate_rps)
    path.write_text("\n".join(rows) + "\n")
    return path


def test_trace_loads_joins_and_scales(tmp_path: Path) -> None:
    first = load_azure_trace(write_azure(tmp_path / "a.csv", 2.0, 60, seed=1))
    second = load_azure_trace(write_azure(tmp_path / "b.csv", 2.0, 60, seed=2))
    assert first.arrival_s[0] == 0.0 and np.all(np.diff(first.arrival_s) >= 0)
    both = concatenate([first, second])
    assert len(both) == len(first) + len(second)
    assert both.arrival_s[len(first)] > first.duration_s
    doubled = scale_rate(first, 2.0, seed=7)
    assert len(doubled) == 2 * len(first)
    assert sorted(doubled.prompt_tokens.tolist()) == sorted(first.prompt_tokens.tolist() * 2)
    again = scale_rate(first, 2.0, seed=7)
    assert np.array_equal(doubled.arrival_s, again.arrival_s)
    with pytest.raises(ValueError, match="factor"):
        scale_rate(first, 0.0, seed=1)


def test_bad_trace_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,abc,4\n")
    with pytest.raises(ValueError, match="ContextTokens"):
        load_azure_trace(bad)


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = (0.1, 0.5, 1.0)
    assert histogram_quantile(0.5, bounds, (0, 10, 0, 0)) == pytest.approx(0.3)
    assert histogram_quantile(0.99, bounds, (0, 0, 0, 5)) == 1.0  # +Inf bucket: highest bound
    assert histogram_quantile(0.5, bounds, (0, 0, 0, 0)) is None


def test_observation_is_a_window_of_counters() -> None:
    def counters(t: float, arrivals: int, area: float, finished: int) -> Counters:
        return Counters(t, arrivals, area, finished, finished, 100 * finished, 10 * finished,
                        (0,) * 23, (0,) * 20, 0.0, 0.0)

    gauges = Gauges(running=(3, 1), waiting=(2, 0), kv_usage=(0.2, 0.4), replicas=3, ready_replicas=2,
                    proxy_inflight=6, front_queue=0)
    o = observe(counters(0, 0, 0.0, 0), counters(15, 30, 60.0, 10), gauges)
    assert o.arrival_rate_rps == 2.0
    assert o.proxy_inflight_avg == 4.0 and o.concurrency_per_pod == 2.0
    assert o.mean_prompt_tokens == 100 and o.mean_output_tokens == 10
    assert o.running_total == 4 and o.waiting_total == 2 and o.kv_usage_mean == pytest.approx(0.3)
    with pytest.raises(ValueError, match="window"):
        observe(counters(15, 0, 0.0, 0), counters(15, 0, 0.0, 0), gauges)


def test_cold_start_is_billed_and_requests_wait_for_a_ready_replica() -> None:
    trace = Trace("two", np.array([0.0, 1.0]), np.array([100, 100]), np.array([10, 10]))
    config = FleetConfig(profile=A100, cold_start_s=30.0, initial_replicas=1, billing_interval_s=60.0)

    class AddOne:
        name, interval_s = "add-one", 0.5

        def desired_replicas(self, obs):
            return 2

    result = simulate(trace, config, AddOne())
    assert result.gpu_seconds == pytest.approx(60.0 + 59.5)  # the new replica is billed while starting
    assert np.all(result.ttft_s < 1.0)  # the ready replica served both


def test_fewest_replicas_search_finds_the_edge() -> None:
    calls = []

    def meets(n: int):
        calls.append(n)
        return n >= 13, n

    assert fewest_replicas(meets, 1, 40, 2)[0] == 13
    assert fewest_replicas(meets, 1, 40, 20)[0] == 13
    with pytest.raises(ValueError, match="max_replicas"):
        fewest_replicas(lambda n: (False, None), 1, 4, 1)


def test_oracle_is_below_a_fixed_fleet_that_meets_the_slo(tmp_path: Path) -> None:
    trace = load_azure_trace(write_azure(tmp_path / "t.csv", 3.0, 180, seed=3))
    config = FleetConfig(profile=A100, cold_start_s=120.0)
    best = oracle(trace, config, slo_ttft_s=2.0)
    assert len(best.counts) == 3 and min(best.counts) >= 1
    assert float(np.mean(best.ttft_s <= 2.0)) >= 0.99
    fixed = max(best.counts)
    static = simulate(trace, FleetConfig(profile=A100, initial_replicas=fixed, min_replicas=fixed,
                                         max_replicas=fixed), StaticPolicy(fixed))
    assert best.gpu_seconds <= static.gpu_seconds


def test_cli_writes_the_json_keys_and_is_deterministic(tmp_path: Path) -> None:
    trace = write_azure(tmp_path / "tiny.csv", 1.5, 240, seed=4)
    outputs = []
    for name in ("one.json", "two.json"):
        out = tmp_path / name
        assert cli.main(["--trace", str(trace), "--slo-ttft-ms", "2000", "--rate-factor", "1",
                         "--warmup-s", "30", "--json", str(out)]) == 0
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]
    rows = json.loads(outputs[0])
    families = {row["family"] for row in rows}
    assert {"oracle", "kiban", "static-peak", "kubeai", "knative-kpa", "production-stack-keda", "aibrix-apa"} <= families
    for row in rows:
        assert {"policy", "gpu_hours", "ttft_slo_attainment", "p95_ttft_s"} <= row.keys()
        assert 0.0 <= row["ttft_slo_attainment"] <= 1.0
    oracle_hours = next(r["gpu_hours"] for r in rows if r["family"] == "oracle")
    assert all(oracle_hours <= r["gpu_hours"] for r in rows if r["complete"])


def test_cli_rejects_a_missing_trace(tmp_path: Path, capsys) -> None:
    assert cli.main(["--trace", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_window_bucket_counts_are_per_bucket_from_cumulative_snapshots():
    """Ten requests at 0.4 s in a window read as ten in that bucket, so p95 stays near 0.4 s."""
    from kiban_dev.benchmark.observe import histogram_quantile, window_bucket_counts

    bounds = (0.1, 0.5, 1.0)
    earlier = (2, 5, 5, 5)  # cumulative in le: 2 ≤ 0.1 s, 3 in (0.1, 0.5]
    later = (2, 15, 15, 15)  # ten more in (0.1, 0.5]
    counts = window_bucket_counts(earlier, later)
    assert counts == (0, 10, 0, 0)
    assert 0.1 < histogram_quantile(0.95, bounds, counts) <= 0.5


def test_an_slo_no_fleet_can_meet_is_a_one_line_error_naming_trace_and_target(tmp_path: Path, capsys) -> None:
    trace = write_azure(tmp_path / "heavy.csv", 40.0, 90, seed=6)
    assert cli.main(["--trace", str(trace), "--slo-ttft-ms", "300", "--rate-factor", "1", "--max-replicas", "1",
                     "--warmup-s", "30", "--home"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("kiban-bench: trace")]
    assert len(errors) == 1 and "heavy" in errors[0] and "300 ms" in errors[0], err
    assert "Traceback" not in err


def test_unattainable_requests_are_those_whose_prefill_alone_misses() -> None:
    from kiban.capacity.batching import prefill_alone_ms
    from kiban_dev.benchmark.run import unattainable_mask

    trace = Trace("t", np.array([0.0, 1.0, 2.0]), np.array([100, 5000, 20000]), np.array([10, 10, 10]))
    limit_s = prefill_alone_ms(A100, 5000, 0.0) / 1000.0  # the second request exactly fits
    assert unattainable_mask(trace, A100, limit_s).tolist() == [True, True, False]
    assert 20000 * A100.delta_ms / 1000.0 > limit_s
