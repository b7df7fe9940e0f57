"""The collector against a real Prometheus scraping real kiban-sim processes (no Kubernetes).

Two simulators serve one model name; Prometheus (1 s scrape) adds the namespace label as a
PodMonitor scrape would. Evenly spaced requests of a known shape make the expected rate and
token means exact, so the collector's PromQL is checked against numbers, not just "non-empty".
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kiban.autoscale.collector import NO_SERIES, UNREACHABLE, Collector, PrometheusHttp
from kiban_dev.devcluster.processes import free_port
from kiban_serving.loadgen.client import replay
from kiban_serving.loadgen.trace import TraceRequest
from support import healthy_simulators, wait_for

pytestmark = pytest.mark.integration

MODEL = "collector-sim"
NAMESPACE = "team-a"
PROFILE = "nvidia-l4/8B"
PROMPT, OUTPUT = 256, 16
RATE_PER_SIM = 2.0
WINDOW_S = 10.0


def even_requests(rate_rps: float, duration_s: float) -> list[TraceRequest]:
    """Requests every 1/rate seconds: a known arrival rate without Poisson noise."""
    return [TraceRequest(i / rate_rps, PROMPT, OUTPUT) for i in range(int(duration_s * rate_rps))]


@pytest.fixture
def simulators(tmp_path):
    yield from healthy_simulators(MODEL, PROFILE, 2, tmp_path)


@pytest.fixture
def prometheus(prometheus_factory, simulators):
    server = prometheus_factory(scrape_interval="1s")
    server.set_targets("sims", [f"127.0.0.1:{sim.port}" for sim in simulators], {"namespace": NAMESPACE})
    return server


def collect(collector: Collector, model: str = MODEL, namespace: str | None = NAMESPACE):
    return collector.collect(model, namespace, time_s=time.time(), current_replicas=2, ready_replicas=2)


def test_busy_model_observation_matches_the_offered_load(prometheus, simulators):
    collector = Collector(PrometheusHttp(prometheus.url), WINDOW_S)
    wait_for(lambda: collect(collector).engines == 2, 30, "both simulators scraped")
    idle = collect(collector)
    assert idle.observation.metrics_available and idle.observation.arrival_rate_rps == 0.0

    requests = even_requests(RATE_PER_SIM, WINDOW_S + 8)

    def drive(url: str) -> None:
        asyncio.run(replay(url, MODEL, requests))

    threads = [threading.Thread(target=drive, args=(sim.url,)) for sim in simulators]
    for thread in threads:
        thread.start()
    time.sleep(WINDOW_S + 4)  # let the rate window fill with steady load
    busy = collect(collector)
    for thread in threads:
        thread.join()

    obs = busy.observation
    assert obs.metrics_available, obs.reason_unavailable
    assert busy.engines == 2
    assert obs.arrival_rate_rps == pytest.approx(2 * RATE_PER_SIM, rel=0.2)
    assert obs.mean_prompt_tokens == pytest.approx(PROMPT)
    assert obs.mean_output_tokens == pytest.approx(OUTPUT)
    assert obs.running is not None and obs.waiting is not None and obs.waiting >= 0
    # TTFT of a lone 256-token prefill on L4/8B is ~137 ms in engine time; the p95 is above it
    assert 0.1 < obs.observed_ttft_p95_s < 2.0
    assert busy.kv_cache_usage is not None and 0.0 <= busy.kv_cache_usage <= 1.0
    assert len(busy.decode_pairs) == 2
    for batch, itl_ms in busy.decode_pairs:
        assert batch > 0 and 60.0 < itl_ms < 200.0  # alpha 69.5 ms + beta 2.1 ms per running sequence


def test_other_model_or_namespace_has_no_series(prometheus, simulators):
    collector = Collector(PrometheusHttp(prometheus.url), WINDOW_S)
    wait_for(lambda: collect(collector).engines == 2, 30, "both simulators scraped")
    for model, namespace in (("someone-else", NAMESPACE), (MODEL, "other-namespace")):
        result = collect(collector, model, namespace)
        assert not result.observation.metrics_available
        assert result.reason_code == NO_SERIES
        assert repr(model) in result.observation.reason_unavailable


def test_unreachable_prometheus_is_unavailable_with_the_reason(prometheus, simulators):
    collector = Collector(PrometheusHttp(prometheus.url, timeout_s=2), WINDOW_S)
    wait_for(lambda: collect(collector).engines == 2, 30, "both simulators scraped")
    url = prometheus.url
    prometheus.stop()
    result = collect(collector)
    assert not result.observation.metrics_available
    assert result.reason_code == UNREACHABLE
    assert url in result.observation.reason_unavailable

    nobody = Collector(PrometheusHttp(f"http://127.0.0.1:{free_port()}", timeout_s=2), WINDOW_S)
    assert collect(nobody).reason_code == UNREACHABLE
