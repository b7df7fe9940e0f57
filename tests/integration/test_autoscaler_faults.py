"""The autoscaler inside the real operator when what it depends on fails: Prometheus answering
garbage (a stand-in on loopback, support.StandInPrometheus, since a real Prometheus cannot be
made to answer garbage on demand), the API server refusing a scale (a real
ValidatingAdmissionPolicy), and an accelerator profile without an engine profile.

What must hold: replicas are held (never scaled down, to zero or to max on bad data),
MetricsAvailable=False says why, nothing bad stays in the policy's memory (once Prometheus is
sane again the model sits where sane data puts it), and every failure is a condition and a
Warning Event.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from kiban.capacity.batching import Slo, max_arrival_rate
from kiban.capacity.profiles import get_profile_by_name
from support import OperatorProcess, StandInPrometheus, kubectl, wait_for

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "kiban.dev", "v1alpha1", "foundationmodels"
NAME = "chat"
PROMPT, OUTPUT, TTFT_MS = 256, 16, 500
INTERVAL_S = 1
EXPECTED_REASON = {
    "down": "PrometheusUnreachable", "5xx": "PrometheusUnreachable", "invalid-json": "PrometheusQueryFailed",
    "nan": "InvalidMetrics", "inf": "InvalidMetrics", "negative": "InvalidMetrics", "absurd": "InvalidMetrics",
    "empty": "NoMetrics", "stale": "StaleMetrics",
}


def capacity() -> float:
    """One L4 replica's capacity at the test's request shape (the capacity model, independent of
    the operator process)."""
    return max_arrival_rate(get_profile_by_name("nvidia-l4/8B"), PROMPT, OUTPUT, Slo(ttft_ms=TTFT_MS), 1.0)


def sane_values(rate_rps: float) -> dict[str, float]:
    return {"engines": 2, "completions": rate_rps, "growth": 0.0, "prompt": PROMPT, "output": OUTPUT,
            "running": 2.0, "waiting": 0.0, "ttft": 0.3, "kv": 0.3, "batch": 2.0, "itl": 0.05,
            "buckets": rate_rps * 60}


def model_body(name: str = NAME, replicas: int = 4, profile: str = "nvidia-l4") -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FoundationModel", "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "parameters": "8B"},
            "accelerator": {"profile": profile},
            "scaling": {"autoscaling": True, "minReplicas": 1, "maxReplicas": 8, "replicas": replicas,
                        "slo": {"ttftP95Ms": TTFT_MS}, "stabilizationWindowSeconds": 0},
        },
    }


class Model:
    def __init__(self, api, namespace: str, name: str = NAME) -> None:
        from kubernetes import client

        self.namespace, self.name = namespace, name
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def get(self) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)

    def replicas(self) -> int:
        return self.get()["spec"]["scaling"]["replicas"]

    def condition(self, type_: str) -> dict | None:
        return next((c for c in (self.get().get("status") or {}).get("conditions") or () if c["type"] == type_), None)

    def events(self, reason: str) -> list:
        return [e for e in self.core.list_namespaced_event(self.namespace).items
                if e.reason == reason and e.involved_object.name == self.name]


@pytest.fixture
def stand_in(namespace):
    prometheus = StandInPrometheus(namespace, NAME, sane_values(3.5 * capacity()))
    yield prometheus
    prometheus.stop()


def operator_env(stand_in: StandInPrometheus, **extra: str) -> dict[str, str]:
    return {"KIBAN_PROMETHEUS_URL": stand_in.url, "KIBAN_AUTOSCALE_INTERVAL_SECONDS": str(INTERVAL_S), **extra}


def test_garbage_from_prometheus_holds_replicas_says_why_and_is_not_remembered(
        kube_api, crds: Path, namespace: str, stand_in, tmp_path: Path):
    model = Model(kube_api, namespace)
    model.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, model_body())
    figures = {}
    with OperatorProcess(crds, namespace, tmp_path / "operator.log", env=operator_env(stand_in)) as operator:
        def available():
            assert operator.proc.poll() is None, "the operator exited"
            cond = model.condition("MetricsAvailable")
            return cond if cond and cond["status"] == "True" else None

        wait_for(available, 60, "MetricsAvailable=True on sane answers")
        time.sleep(3 * INTERVAL_S)
        settled = model.replicas()
        assert 2 <= settled < 8, f"sane data at 3.5 x one replica's capacity should size 4, got {settled}"
        for mode, reason in EXPECTED_REASON.items():
            stand_in.set_mode(mode)
            started = time.monotonic()

            def said(reason=reason):
                cond = model.condition("MetricsAvailable")
                return cond if cond and cond["status"] == "False" and cond["reason"] == reason else None

            cond = wait_for(said, 30, f"MetricsAvailable=False {reason} in mode {mode}")
            figures[mode] = round(time.monotonic() - started, 1)
            assert f"replicas held at {settled}" in cond["message"], cond
            time.sleep(3 * INTERVAL_S)  # several passes on garbage
            assert model.replicas() == settled, f"{mode}: replicas moved from {settled} to {model.replicas()}"
            stand_in.set_mode("sane")
            wait_for(available, 30, f"MetricsAvailable=True again after {mode}")
        time.sleep(4 * INTERVAL_S)
        fm = model.get()
        assert fm["spec"]["scaling"]["replicas"] == settled, "garbage left something in the policy's memory"
        reason = fm["status"]["scaling"]["reason"]
        numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?", reason)]
        assert max(numbers) < 1e4, f"an absurd number survived into the decision: {reason}"
        assert model.events("MetricsUnavailable")
    print(f"FIGURES Prometheus garbage: replicas held at {settled} through {len(EXPECTED_REASON)} modes; "
          f"seconds to MetricsAvailable=False: {figures}")


FREEZE_POLICY = """
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {namespace}}}}}
    resourceRules:
    - apiGroups: [kiban.dev]
      apiVersions: [v1alpha1]
      operations: [UPDATE]
      resources: [foundationmodels/scale]
  validations:
  - expression: object.spec.replicas <= 4
    message: replicas are frozen at 4 or fewer by the change-freeze policy
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {namespace}}}}}
"""


def test_a_refused_scale_is_scaling_failed_with_the_servers_message_and_leaves_the_policy_as_it_was(
        kube_api, crds: Path, namespace: str, stand_in, tmp_path: Path):
    """A real ValidatingAdmissionPolicy (scoped to the test's namespace) refuses scales above 4;
    the load asks for more."""
    model = Model(kube_api, namespace)
    policy = yaml.safe_load_all(FREEZE_POLICY.format(name=f"freeze-{namespace}"[:63], namespace=namespace))
    text = yaml.safe_dump_all(list(policy))
    kubectl(crds, "apply", "-f", "-", input_text=text)
    try:
        stand_in.values = sane_values(5.5 * capacity())
        model.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, model_body(replicas=4))
        with OperatorProcess(crds, namespace, tmp_path / "operator.log", env=operator_env(stand_in)):
            def failed():
                cond = model.condition("ScalingActive")
                return cond if cond and cond["status"] == "False" and cond["reason"] == "ScalingFailed" else None

            cond = wait_for(failed, 60, "ScalingActive=False ScalingFailed")
            assert "frozen at 4 or fewer by the change-freeze policy" in cond["message"], cond  # the server's words
            assert "from 4 to" in cond["message"]
            events = wait_for(lambda: model.events("ScalingFailed"), 15, "a ScalingFailed Event")
            assert events[0].type == "Warning"
            time.sleep(3 * INTERVAL_S)
            fm = model.get()
            assert fm["spec"]["scaling"]["replicas"] == 4
            assert not (fm["status"].get("scaling") or {}).get("lastScaleTime"), "a failed scale recorded as done"
            # the same failure again and again is one Event, counted, not a new object per pass
            repeated = model.events("ScalingFailed")
            assert len(repeated) == 1 and (repeated[0].count or 1) >= 2, [(e.message, e.count) for e in repeated]
            kubectl(crds, "delete", "-f", "-", input_text=text)

            def scaled():
                cond = model.condition("ScalingActive")
                return model.replicas() > 4 and cond and cond["status"] == "True"

            wait_for(scaled, 60, "the scale once the policy is gone")
            assert model.get()["status"]["scaling"]["lastScaleTime"]
    finally:
        kubectl(crds, "delete", "--ignore-not-found", "-f", "-", input_text=text, check=False)


def test_an_accelerator_profile_without_an_engine_profile_is_said_not_silently_unscaled(
        kube_api, crds: Path, namespace: str, stand_in, tmp_path: Path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump({"profiles": {"nvidia-l40s": {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L40S"}, "resourceName": "nvidia.com/gpu",
        "gpuMemoryGiB": 48, "gpusPerNode": 8}}}))
    model = Model(kube_api, namespace)
    model.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                 model_body(replicas=2, profile="nvidia-l40s"))
    env = operator_env(stand_in, KIBAN_ACCELERATOR_PROFILES=str(profiles))
    with OperatorProcess(crds, namespace, tmp_path / "operator.log", env=env):
        def held():
            cond = model.condition("ScalingActive")
            return cond if cond and cond["reason"] == "NoEngineProfile" else None

        cond = wait_for(held, 60, "ScalingActive=False NoEngineProfile")
        assert cond["status"] == "False" and "'nvidia-l40s'" in cond["message"], cond
        assert "replicas stay at 2" in cond["message"]
        events = wait_for(lambda: model.events("NoEngineProfile"), 15, "a NoEngineProfile Event")
        assert events[0].type == "Warning" and "nvidia-l40s" in events[0].message
        assert model.replicas() == 2
        assert "scaling" not in (model.get().get("status") or {})  # no stale numbers pretend to be a decision
