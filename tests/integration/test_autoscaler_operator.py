"""The autoscaler inside the real operator process, on the real control plane, fed by a real
Prometheus scraping real kiban-sim processes.

The operator runs as `python -m kiban run --standalone -n NS` with KIBAN_PROMETHEUS_URL and a
2 s autoscale interval (rate window 4 x 2 s). Two simulators serve the FoundationModel's
served model name; Prometheus scrapes them every second and labels them with the test's
namespace, as a PodMonitor scrape would. (kwok runs the Deployment's pods; they serve
nothing, so the simulators stand for the engines.) Poisson load from the load generator
raises the arrival rate; the operator must raise the FoundationModel's replicas and the
Deployment's, with the numbers in status.scaling and an Event. Stopping Prometheus must hold
the replicas and set MetricsAvailable=False.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kiban.capacity.batching import Slo, max_arrival_rate
from kiban.capacity.profiles import get_profile_by_name
from kiban_serving.loadgen.trace import poisson_requests
from support import BackgroundReplay, OperatorProcess, healthy_simulators, wait_for

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "kiban.dev", "v1alpha1", "foundationmodels"
NAME = "chat"
PROFILE = "nvidia-l4/8B"
PROMPT, OUTPUT = 256, 16
TTFT_P95_MS = 500
LOAD_PER_SIM = 1.1  # x one replica's capacity per simulator: two simulators need 3 replicas
INTERVAL_S = 2
MAX_REPLICAS = 5


@pytest.fixture
def simulators(tmp_path):
    yield from healthy_simulators(NAME, PROFILE, 2, tmp_path)


@pytest.fixture
def operator(crds: Path, namespace: str, prometheus_factory, simulators, tmp_path):
    prometheus = prometheus_factory(scrape_interval="1s")
    prometheus.set_targets("engines", [f"127.0.0.1:{sim.port}" for sim in simulators], {"namespace": namespace})
    # the datasheet profile, not the online fit (test_engine_fit_operator's subject): the capacity
    # expected below is the datasheet's, and 8 s windows are too short for a steady fit
    env = {"KIBAN_PROMETHEUS_URL": prometheus.url, "KIBAN_AUTOSCALE_INTERVAL_SECONDS": str(INTERVAL_S),
           "KIBAN_ENGINE_FIT": "false"}
    with OperatorProcess(crds, namespace, tmp_path / "operator.log", env=env) as process:
        yield prometheus, process.proc


class Model:
    """The test's own reads of the FoundationModel, its Deployment and Events."""

    def __init__(self, api, namespace: str) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def create(self, body: dict) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get(self) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME)

    def condition(self, type_: str) -> dict | None:
        return next((c for c in (self.get().get("status") or {}).get("conditions") or [] if c["type"] == type_), None)

    def deployment_replicas(self) -> int | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.apps.read_namespaced_deployment(NAME, self.namespace).spec.replicas
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def events(self, reason: str) -> list[str]:
        return [e.message for e in self.core.list_namespaced_event(self.namespace).items if e.reason == reason]


def model_body() -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FoundationModel", "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "parameters": "8B"},
            "accelerator": {"profile": "nvidia-l4"},
            "scaling": {"autoscaling": True, "minReplicas": 1, "maxReplicas": MAX_REPLICAS,
                        "slo": {"ttftP95Ms": TTFT_P95_MS}, "stabilizationWindowSeconds": 0},
        },
    }


def test_load_raises_replicas_with_reason_and_lost_metrics_hold_them(kube_api, namespace, operator, simulators):
    prometheus, process = operator
    model = Model(kube_api, namespace)
    model.create(model_body())

    def alive():
        assert process.poll() is None, f"the operator exited with {process.returncode}"

    # idle: metrics are there, λ = 0, one replica
    def metrics_available():
        alive()
        cond = model.condition("MetricsAvailable")
        return cond if cond and cond["status"] == "True" else None

    wait_for(metrics_available, 60, "MetricsAvailable=True while idle")
    assert model.get()["status"]["scaling"]["desiredReplicas"] == 1
    assert wait_for(lambda: model.deployment_replicas() == 1, 30, "the Deployment at 1 replica")

    # load: Poisson arrivals of 256-token prompts at 1.1 x one replica's capacity on each simulator
    capacity = max_arrival_rate(get_profile_by_name(PROFILE), PROMPT, OUTPUT, Slo(ttft_ms=TTFT_P95_MS), 0.75)
    requests = poisson_requests(LOAD_PER_SIM * capacity, 90, PROMPT, OUTPUT, seed=7)
    load = BackgroundReplay([sim.url for sim in simulators], NAME, requests).start()
    try:
        def scaled_up():
            alive()
            fm = model.get()
            scaling = (fm.get("status") or {}).get("scaling") or {}
            replicas = fm["spec"]["scaling"].get("replicas")
            return fm if replicas and replicas >= 2 and scaling.get("desiredReplicas") == replicas else None

        fm = wait_for(scaled_up, 60, "spec.scaling.replicas >= 2 with status.scaling agreeing")
        replicas = fm["spec"]["scaling"]["replicas"]
        scaling = fm["status"]["scaling"]
        assert "λ=" in scaling["reason"] and f"→ {replicas} replicas" in scaling["reason"], scaling
        assert f"TTFT p95 ≤ {TTFT_P95_MS} ms" in scaling["reason"]
        assert scaling["arrivalRateRps"] > capacity
        assert scaling["capacityPerReplicaRps"] == pytest.approx(capacity, rel=0.1)
        assert scaling["predictedTtftP95Ms"] > 0 and scaling["lastScaleTime"]
        assert wait_for(lambda: (model.deployment_replicas() or 0) >= 2, 30, "the Deployment scaled up")
        scaled = wait_for(lambda: [m for m in model.events("Scaled") if m.startswith("Scaled from 1 to ")], 15,
                          "a Scaled Event")
        assert "λ=" in scaled[0]
        assert model.condition("ScalingLimited")["status"] == "False"

        # Prometheus goes away: replicas are held, MetricsAvailable=False says why
        held = model.get()["spec"]["scaling"]["replicas"]
        prometheus.stop()

        def metrics_lost():
            alive()
            cond = model.condition("MetricsAvailable")
            return cond if cond and cond["status"] == "False" and cond["reason"] == "PrometheusUnreachable" else None

        lost = wait_for(metrics_lost, 30, "MetricsAvailable=False after Prometheus stopped")
    finally:
        load.stop()
    assert lost["reason"] == "PrometheusUnreachable"
    assert f"replicas held at {held}" in lost["message"]
    # a few more passes without metrics and without load: still held (stabilisation window is 0)
    first_unavailable = model.get()["status"]["scaling"]["reason"]
    assert first_unavailable.startswith("metrics unavailable")
    time.sleep(3 * INTERVAL_S)
    fm = model.get()
    assert fm["spec"]["scaling"]["replicas"] == held
    assert model.deployment_replicas() == held
    assert model.condition("MetricsAvailable")["status"] == "False"
    assert model.events("MetricsUnavailable")

    # autoscaling switched off: the autoscaler removes its status and conditions, replicas stay the user's
    model.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME,
                                                {"spec": {"scaling": {"autoscaling": False}}})

    def cleared():
        status = model.get().get("status") or {}
        types = {c["type"] for c in status.get("conditions") or []}
        return status if "scaling" not in status and not types & {"MetricsAvailable", "ScalingLimited"} else None

    status = wait_for(cleared, 30, "status.scaling and the autoscaler's conditions removed")
    assert {"Ready", "Scheduled"} <= {c["type"] for c in status["conditions"]}
    assert model.get()["spec"]["scaling"]["replicas"] == held
