"""The benchmark bills a replica's GPUs as the operator sizes them: 16 for a 405B bf16 H100 replica."""

from __future__ import annotations

import numpy as np
import pytest

from kiban_dev.benchmark.fleet import simulate
from kiban_dev.benchmark.replica_gpus import operator_gpus_per_replica
from kiban_dev.benchmark.run import BenchConfig
from kiban_dev.benchmark.traces import Trace
from kiban.capacity.profiles import get_profile_by_name

# by hand: 405e9 x 2 bytes = 754.4 GiB > 576 GiB on one 8 x H100 node -> two nodes, 16 GPUs;
# 70B: 130.4 x 1.25 + 4 = 167 GiB > 144 on two A100s, <= 288 on four; 8B fits one GPU
EXPECTED = {"nvidia-h100-80gb/405B": 16, "nvidia-a100-80gb/70B": 4, "nvidia-a100-80gb/8B": 1}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_gpus_per_replica_come_from_the_operators_sizing(name):
    assert operator_gpus_per_replica(get_profile_by_name(name)) == EXPECTED[name]
    assert BenchConfig(profile=name).gpus_per_replica == EXPECTED[name]


def test_an_explicit_count_still_wins():
    assert BenchConfig(profile="nvidia-h100-80gb/405B", gpus_per_replica=3).gpus_per_replica == 3


def test_gpu_hours_of_a_405b_fleet_are_16_per_replica_hour():
    rng = np.random.default_rng(3)
    arrivals = np.sort(rng.uniform(0, 120, 40))
    trace = Trace(name="t", arrival_s=arrivals, prompt_tokens=rng.integers(100, 800, 40),
                  output_tokens=rng.integers(10, 100, 40))
    bench = BenchConfig(profile="nvidia-h100-80gb/405B", cold_start_s=0.0, warmup_s=0.0)
    fleet = bench.fleet(initial_replicas=2)
    result = simulate(trace, fleet)  # a fixed fleet of 2 replicas for the whole horizon
    replica_hours = 2 * fleet.horizon_s(trace) / 3600.0
    assert result.gpu_hours == pytest.approx(16 * replica_hours)
