"""PrometheusServer: the real Prometheus binary scrapes file_sd targets, reloads, and stops cleanly."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from kiban_dev.devcluster import PrometheusError
from kiban_dev.devcluster.processes import free_port, pid_alive
from kiban_dev.devcluster.prometheus import build_config, file_sd_scrape_config

pytestmark = pytest.mark.integration


def wait_for_result(server, promql: str, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    result: list[dict] = []
    while time.monotonic() < deadline:
        result = server.query(promql)
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"{promql} returned nothing within {timeout:.0f}s; targets: {server.active_targets()}")


@pytest.fixture
def metrics_endpoint():
    """A prometheus_client exporter on its own registry: one counter at 7."""
    registry = CollectorRegistry()
    Counter("kiban_test_events", "events seen by the test exporter", registry=registry).inc(7)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=5)


def test_scrapes_file_sd_targets_and_answers_queries(prometheus_factory, metrics_endpoint):
    prometheus = prometheus_factory(scrape_interval="1s")
    prometheus.set_targets("exporter", [metrics_endpoint], {"model": "demo"})
    result = wait_for_result(prometheus, 'kiban_test_events_total{job="kiban",model="demo"}')
    assert [float(sample["value"][1]) for sample in result] == [7.0]


def test_reload_applies_a_new_config_and_refuses_a_bad_one(prometheus_factory, metrics_endpoint, tmp_path):
    prometheus = prometheus_factory()
    other_dir = tmp_path / "other-sd"
    other_dir.mkdir()
    prometheus.set_config(build_config([file_sd_scrape_config("renamed", other_dir)], scrape_interval="1s"))
    (other_dir / "t.json").write_text(f'[{{"targets": ["{metrics_endpoint}"]}}]')
    wait_for_result(prometheus, 'up{job="renamed"} == 1')

    prometheus.config_path.write_text("scrape_configs: [{job_name: 1, static_configs: nope}]\n")
    with pytest.raises(PrometheusError, match="reload failed"):
        prometheus.reload()


def test_stop_leaves_no_process_behind(prometheus_factory):
    prometheus = prometheus_factory()
    pid = prometheus.pid
    assert pid_alive(pid)
    prometheus.stop()
    assert not pid_alive(pid)
