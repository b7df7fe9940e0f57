"""Every query of every generated dashboard panel returns series from a real Prometheus.

The Prometheus (the pinned binary) scrapes three real endpoints and loads the chart's rule file:
- kiban-sim (the vLLM simulator) under steady load from a few client threads, for the vllm:*
  series; it exposes vLLM 0.33's names, labels and buckets;
- the Kiban gateway those clients call (kiban.gateway.server, in-process, its routing table fed
  the model and pods a watch would deliver: one pod the sim, one refusing connections), for the
  kiban_gateway_* series; one request is held at zero and times out before the pods appear;
- the operator's own metrics object, kiban.metrics.OperatorMetrics (not a stand-in registry:
  the same class `kiban run` serves), populated through its public methods as the reconcile
  pass and the autoscaler do, for the kiban_* series.
Recording rules (kiban:ttft_slo_errors:*) are evaluated by Prometheus from that data, so the
SLO-attainment panels are tested through the rules too. The per-model panels are also rendered
to a PNG through kiban_dev.chartgen.render.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from kiban_dev.devcluster import PrometheusServer, ToolsMissingError
from kiban_dev.devcluster.processes import free_port
from kiban_dev.devcluster.prometheus import build_config
from kiban.autoscale import learning
from kiban.autoscale.model_pass import record_engine_metrics
from kiban.capacity.profiles import get_profile_by_name
from kiban.metrics import ModelKey, OperatorMetrics
from kiban_dev.chartgen import dashboards, render
from kiban_serving.sim.process import SimulatorProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "charts" / "kiban" / "files" / "rules" / "kiban.rules.yaml"
MODEL = "llama-8b"
KEY = ModelKey("ml", "llama", MODEL)
VARIABLES = {"model_name": MODEL, "__rate_interval": "15s", "__range": "2m", "datasource": ""}
WAIT_S = 90.0


def populate(metrics: OperatorMetrics) -> None:
    """Every docs/metrics.md series, written through the operator's own methods."""
    for attribute, value in {
        "desired_replicas": 3, "current_replicas": 2, "ready_replicas": 2, "gpus_per_replica": 1,
        "predicted_ttft_p95_seconds": 0.3, "predicted_itl_p95_seconds": 0.04,
        "capacity_per_replica_rps": 2.5, "observed_arrival_rate_rps": 4.0, "metrics_available": 1,
    }.items():
        metrics.set_model_gauge(attribute, KEY, value)
    metrics.set_model_gauge("slo_ttft_seconds", KEY, 0.5, percentile="p95")
    metrics.set_model_gauge("slo_ttft_seconds", KEY, 1.0, percentile="p99")
    metrics.set_model_gauge("scaling_limited", KEY, 1, reason="MaxReplicas")
    metrics.set_model_gauge("scaling_limited", KEY, 0, reason="GpuBudget")
    for test, score in (("psi", 0.04), ("ks", 0.11)):
        metrics.set_model_gauge("drift_score", KEY, score, signal="prompt_tokens", test=test)
    metrics.set_model_gauge("drift_detected", KEY, 0, signal="prompt_tokens")
    metrics.count_scale_event(KEY, "up")
    # the engine fit's series as the autoscaler writes them: prior, fitted, sd, cold start, ratio
    prior = get_profile_by_name("nvidia-l4/8B")
    _, learned = learning.learn(learning.LearningMemory(), prior, [], [], 100.0)
    record_engine_metrics(metrics, KEY, learned, (1.0, 1.2))
    metrics.record_reconcile(succeeded=True, seconds=0.02)
    metrics.record_reconcile(succeeded=False, seconds=0.3)
    metrics.autoscaler_pass_duration_seconds.observe(0.8)
    metrics.autoscaler_pass_models.set(1)
    metrics.prometheus_query_duration_seconds.labels(result="ok").observe(0.01)
    metrics.event_loop_lag_seconds.observe(0.002)
    metrics.leader.set(1)
    metrics.api_writes_total.labels(field_manager="kiban").inc()


def send_load(url: str, stop: threading.Event, max_requests: int = 3000) -> None:
    """One client: short completions back to back until told to stop (bounded)."""
    session = requests.Session()
    for _ in range(max_requests):
        if stop.is_set():
            return
        try:
            session.post(f"{url}/v1/completions", timeout=30, json={
                "model": MODEL, "prompt": "tell me about foundations " * 40, "max_tokens": 24, "ignore_eos": True})
        except requests.RequestException:
            time.sleep(0.1)


class GatewayThread:
    """The gateway's servers on an event loop of their own thread (no API server: fed by hand)."""

    def __init__(self) -> None:
        import asyncio

        from kiban.gateway.server import Gateway, GatewaySettings

        self.loop = asyncio.new_event_loop()
        self.gateway = Gateway(GatewaySettings(), api=None)
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop_event = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import asyncio

        from kiban.gateway.server import serve

        asyncio.set_event_loop(self.loop)
        self.stop_event = asyncio.Event()
        self.loop.run_until_complete(serve(self.gateway, "127.0.0.1", self.port, "127.0.0.1", self.admin_port,
                                           self.stop_event, shutdown_timeout_s=2))

    def start(self) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                requests.get(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("the gateway thread did not start")

    def call(self, fn, *args) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout=10)


def engine_pod(name: str, port: int) -> dict:
    return {"metadata": {"name": name, "namespace": KEY.namespace, "labels": {"kiban.dev/model": KEY.foundationmodel}},
            "spec": {"containers": [{"name": "vllm", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}


def model_body() -> dict:
    return {"apiVersion": "kiban.dev/v1alpha1", "kind": "FoundationModel",
            "metadata": {"name": KEY.foundationmodel, "namespace": KEY.namespace},
            "spec": {"model": {"uri": "hf://org/llama", "parameters": "8B", "servedModelName": MODEL},
                     "accelerator": {"profile": "nvidia-l4"}, "scaling": {"minReplicas": 0, "maxReplicas": 2,
                                                                          "autoscaling": False},
                     "exposure": {"gateway": {"enabled": True, "maxHoldSeconds": 1}}}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(Prometheus, OperatorMetrics): sim under load and the operator's metrics, both scraped every second."""
    workdir = tmp_path_factory.mktemp("dashboards")
    sim = SimulatorProcess(MODEL, "nvidia-l4/8B", ["--startup-seconds", "0", "--max-num-seqs", "4"],
                           log_path=workdir / "sim.log")
    metrics = OperatorMetrics()
    operator_port = free_port()
    server, thread = metrics.serve(operator_port, addr="127.0.0.1")
    stop = threading.Event()
    clients: list[threading.Thread] = []
    prometheus = None
    gateway = GatewayThread()
    try:
        sim.__enter__()
        sim.wait_healthy()
        populate(metrics)
        gateway.start()
        gateway.call(gateway.gateway.on_model, (KEY.namespace, KEY.foundationmodel), None, model_body())
        time.sleep(0.5)
        held = requests.post(gateway.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)
        assert held.status_code == 503  # held at zero for maxHoldSeconds, then refused with Retry-After
        closed = free_port()
        gateway.call(gateway.gateway.on_pod, (KEY.namespace, "a-refusing"), None, engine_pod("a-refusing", closed))
        gateway.call(gateway.gateway.on_pod, (KEY.namespace, "b-sim"), None, engine_pod("b-sim", sim.port))
        clients = [threading.Thread(target=send_load, args=(gateway.url, stop), daemon=True) for _ in range(6)]
        for client in clients:
            client.start()
        config = build_config([
            {"job_name": "vllm", "static_configs": [{"targets": [f"127.0.0.1:{sim.port}"]}]},
            {"job_name": "kiban-operator", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}]},
            {"job_name": "kiban-gateway", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{gateway.admin_port}"]}]},
        ], scrape_interval="1s", rule_files=[RULES_FILE])
        prometheus = PrometheusServer(config, workdir=workdir / "prometheus")
        try:
            prometheus.start()
        except ToolsMissingError as exc:
            pytest.fail(f"integration tests need the pinned tools: {exc}", pytrace=False)
        yield prometheus, metrics
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=35)
        if prometheus is not None:
            prometheus.stop()
        server.shutdown()
        thread.join(timeout=5)
        gateway.stop()
        sim.stop()


def empty_queries(prometheus: PrometheusServer, dashboard: dict) -> list[str]:
    empty = []
    for title, expr in dashboards.panel_queries(dashboard):
        if not prometheus.query(dashboards.expand_variables(expr, VARIABLES)):
            empty.append(f"{title}: {expr}")
    return empty


def wait_for_all_series(prometheus: PrometheusServer, dashboard: dict) -> list[str]:
    """Until every query answers (rates need a few scrapes, rules a few evaluations); what stays empty."""
    deadline = time.monotonic() + WAIT_S
    empty = empty_queries(prometheus, dashboard)
    while empty and time.monotonic() < deadline:
        time.sleep(2)
        empty = empty_queries(prometheus, dashboard)
    return empty


@pytest.mark.parametrize("name", ["kiban-fleet.json", "kiban-model.json"])
def test_every_panel_query_returns_series(stack, name):
    prometheus, _ = stack
    dashboard = dashboards.dashboards()[name]
    assert len(dashboards.panel_queries(dashboard)) >= 10
    empty = wait_for_all_series(prometheus, dashboard)
    assert not empty, "queries that returned no series:\n" + "\n".join(empty)


def test_a_query_on_the_model_label_would_have_matched_nothing(stack):
    """The hygiene rule behind model_name: vLLM's series carry no `model` label."""
    prometheus, _ = stack
    assert prometheus.query(f'vllm:num_requests_running{{model_name="{MODEL}"}}')
    assert prometheus.query(f'vllm:num_requests_running{{model="{MODEL}"}}') == []


def test_slo_rules_turn_simulator_histograms_into_error_ratios(stack):
    prometheus, _ = stack
    wait_for_all_series(prometheus, dashboards.dashboards()["kiban-model.json"])
    selected = {s["metric"]["percentile"]: s["metric"]["le"] for s in prometheus.query("kiban:slo_ttft_bucket:selected")}
    assert selected == {"p95": "0.5", "p99": "1.0"}
    ratios = prometheus.query(f'kiban:ttft_slo_errors:ratio_rate5m{{model_name="{MODEL}"}}')
    assert {r["metric"]["percentile"] for r in ratios} == {"p95", "p99"}
    for ratio in ratios:
        assert 0.0 <= float(ratio["value"][1]) <= 1.0
        assert ratio["metric"]["namespace"] == "ml" and ratio["metric"]["foundationmodel"] == "llama"


def test_render_draws_every_per_model_panel(stack, tmp_path):
    prometheus, _ = stack
    wait_for_all_series(prometheus, dashboards.dashboards()["kiban-model.json"])
    out = tmp_path / "model-dashboard.png"
    counts = render.render_model_dashboard(prometheus.url, MODEL, out, range_s=60, rate_interval="15s")
    assert set(counts) == {spec.title for spec in dashboards.model_panels()}
    assert all(n > 0 for n in counts.values()), counts
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000
