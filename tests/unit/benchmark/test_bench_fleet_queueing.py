"""The fleet simulation against closed forms: one-at-a-time replicas behind a central queue
with exponential service are an M/M/c queue, so the mean wait must match Erlang C."""

from __future__ import annotations

import numpy as np
import pytest

from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.erlang import mean_wait
from kiban_dev.benchmark.fleet import FleetConfig, simulate
from kiban_dev.benchmark.traces import Trace

STEP_MS = 10.0  # every engine step (prefill or decode) takes exactly this long
MEAN_SERVICE_S = 1.0
TOLERANCE = 0.08  # relative, on the mean over seeds; the geometric service has cv^2 = 0.99

FLAT = EngineProfile(
    name="test/flat-steps", gpu="test", model_params_b=1.0,
    alpha_ms=STEP_MS, beta_ms=0.0, gamma_ms=STEP_MS, delta_ms=0.0,
    max_num_seqs=1, kv_cache_tokens=1_000_000, startup_s=0.0, source="unit test",
)


def poisson_trace(rate_rps: float, requests: int, seed: int) -> Trace:
    """Poisson arrivals; a 1-token prompt and geometric output, so service = tokens x 10 ms
    is (nearly) exponential with mean MEAN_SERVICE_S."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, requests))
    tokens = rng.geometric(STEP_MS / 1000.0 / MEAN_SERVICE_S, requests)
    return Trace("poisson", arrivals - arrivals[0], np.ones(requests, dtype=np.int64), tokens.astype(np.int64))


def simulated_mean_wait(rate: float, servers: int, seed: int, requests: int = 12_000) -> float:
    config = FleetConfig(profile=FLAT, cold_start_s=0.0, initial_replicas=servers, min_replicas=servers,
                         max_replicas=servers, router_queue=True, max_num_seqs=1)
    result = simulate(poisson_trace(rate, requests, seed), config)
    warm = result.queue_s[requests // 10:]  # drop the empty-system start
    return float(np.mean(warm))


@pytest.mark.parametrize(("rate", "servers"), [(0.7, 1), (2.0, 3), (3.2, 4)])
def test_mean_wait_matches_erlang_c(rate: float, servers: int) -> None:
    expected = mean_wait(rate, 1.0 / MEAN_SERVICE_S, servers)
    waits = [simulated_mean_wait(rate, servers, seed) for seed in (1, 2, 3)]
    assert np.mean(waits) == pytest.approx(expected, rel=TOLERANCE), (waits, expected)


def test_service_time_is_tokens_times_step() -> None:
    """A lone request's latency is exactly its steps: the queue check rests on this."""
    trace = Trace("one", np.array([0.0]), np.array([1]), np.array([50]))
    config = FleetConfig(profile=FLAT, cold_start_s=0.0, max_num_seqs=1)
    result = simulate(trace, config)
    assert result.ttft_s[0] == pytest.approx(STEP_MS / 1000.0)
    assert result.queue_s[0] == pytest.approx(0.0)
    assert result.tpot_s[0] == pytest.approx(STEP_MS / 1000.0)
