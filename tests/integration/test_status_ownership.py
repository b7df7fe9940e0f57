"""One owner per status field, on the real API server: the reconciler's and the autoscaler's own
status writes (the operator's functions, not copies), each working from a copy of the model read
before the other one wrote, which is how a pass that read the cache, then waited on the API or on
13 Prometheus queries, used to write the other writer's condition back to an old value.

With server-side apply and one field manager per writer (`kiban`, `kiban-autoscaler`) each
writer's conditions survive the other's write, and managedFields says who owns what.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "kiban.dev", "v1alpha1", "foundationmodels"


def model_body(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FoundationModel", "metadata": {"name": name},
        "spec": {"model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct", "parameters": "500M"},
                 "accelerator": {"profile": "nvidia-l4"},
                 "scaling": {"minReplicas": 1, "maxReplicas": 4, "slo": {"ttftP95Ms": 500}}},
    }


def operator_context(kube_api):
    """What the two writers need of the operator's context: its Writer on a real API client, its
    I/O (a thread), a clock; Events are dropped."""
    from kiban.config import OperatorConfig
    from kiban.metrics import OperatorMetrics
    from kiban.reconcile.apply import Writer

    async def io(fn, *args, priority=None):
        return await asyncio.to_thread(fn, *args)

    return SimpleNamespace(writer=Writer(kube_api), io=io, post_event_later=lambda *a, **k: None,
                           metrics=OperatorMetrics(), clock=lambda: datetime.now(UTC), config=OperatorConfig())


def reconciler_write(context, body: dict, *, degraded: str | None = None) -> None:
    """The reconciler's end of a pass (kiban.reconcile.run._finish) with the world it would see."""
    from kiban.reconcile.run import Outcome, _finish
    from kiban.reconcile.status import Sizing, World

    world = World(generation=body["metadata"]["generation"], sizing=Sizing(True), desired_replicas=1,
                  apply_errors=[degraded] if degraded else [], namespace=body["metadata"]["namespace"])
    asyncio.run(_finish(context, body, world, Outcome(), model=None))


def autoscaler_write(context, body: dict, *, available: bool) -> None:
    """The autoscaler's status apply (kiban.autoscale.model_pass.Autoscaler) for one decision."""
    from kiban.autoscale.collector import Collected
    from kiban.autoscale.model_pass import ACTIVE, AutoscaleSettings, Autoscaler, autoscaler_conditions, \
        scaling_active_condition, scaling_status
    from kiban.autoscale.policy import Decision, Observation

    autoscaler = Autoscaler(collector=None, settings=AutoscaleSettings("http://unused:9090"))
    observation = Observation(time_s=0.0, metrics_available=available, current_replicas=1, arrival_rate_rps=1.0,
                              reason_unavailable=None if available else "Prometheus at http://p is unreachable")
    collected = Collected(observation, reason_code=None if available else "PrometheusUnreachable", engines=1)
    decision = Decision(1, "kept", None, None, None, None, metrics_ok=available)
    generation = body["metadata"]["generation"]
    own = autoscaler_conditions(decision, collected, generation) + [scaling_active_condition(ACTIVE, "", generation)]
    asyncio.run(autoscaler._apply(context, body, {"scaling": scaling_status(decision, collected, None)}, own))
    autoscaler.shutdown()


def conditions(custom, namespace: str, name: str) -> dict[str, dict]:
    body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}


def test_each_writer_applies_only_its_own_conditions_and_the_others_survive(kube_api, crds: Path, namespace: str):
    from kubernetes import client

    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, model_body("race"))
    context = operator_context(kube_api)

    # 1. both read the model; the autoscaler writes first, the reconciler then writes from its old copy
    old = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "race")
    autoscaler_write(context, old, available=False)
    assert conditions(custom, namespace, "race")["MetricsAvailable"]["status"] == "False"
    reconciler_write(context, old)
    after = conditions(custom, namespace, "race")
    assert after["MetricsAvailable"]["status"] == "False", "the reconciler reverted the autoscaler's condition"
    assert after["MetricsAvailable"]["reason"] == "PrometheusUnreachable"
    assert after["Ready"]["status"] == "False" and after["Degraded"]["status"] == "False"

    # 2. the other way round: the reconciler says Degraded; the autoscaler then writes from an old copy
    old = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "race")
    fresh = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "race")
    reconciler_write(context, fresh, degraded="create Service/race failed: 422 Unprocessable Entity: bad port")
    autoscaler_write(context, old, available=True)
    after = conditions(custom, namespace, "race")
    assert after["Degraded"]["status"] == "True" and "bad port" in after["Degraded"]["message"], \
        "the autoscaler reverted the reconciler's condition"
    assert after["MetricsAvailable"]["status"] == "True"

    # managedFields: each condition belongs to its writer's field manager, applied on /status
    body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "race")
    owners = {}
    for entry in body["metadata"]["managedFields"]:
        if entry.get("subresource") != "status" or entry["operation"] != "Apply":
            continue
        for key in entry["fieldsV1"].get("f:status", {}).get("f:conditions", {}):
            owners[key] = entry["manager"]
    assert owners['k:{"type":"Ready"}'] == "kiban" and owners['k:{"type":"Degraded"}'] == "kiban"
    assert owners['k:{"type":"MetricsAvailable"}'] == "kiban-autoscaler"
    assert owners['k:{"type":"ScalingActive"}'] == "kiban-autoscaler"
    assert not [e for e in body["metadata"]["managedFields"]
                if e.get("subresource") == "status" and e["operation"] == "Update"], "a merge patch wrote status"


def test_the_api_servers_own_words_reach_apply_failed(kube_api, namespace: str):
    """ApplyFailed used to say only "422 Unprocessable Entity"; the API server says which field."""
    from kubernetes.client.exceptions import ApiException

    from kiban.reconcile.apply import Writer, api_error_message
    from kiban.reconcile.plan import Action

    writer = Writer(kube_api)
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad-port", "namespace": namespace},
           "spec": {"ports": [{"name": "http", "port": 70000}]}}
    result = writer.execute_one(Action("create", bad, "test"), namespace)
    (message,) = result.errors
    assert message.startswith("create Service/bad-port failed: 422 Unprocessable Entity: ")
    assert "spec.ports[0].port" in message, message
    with pytest.raises(ApiException) as caught:
        writer.apply(bad, namespace)
    assert "spec.ports[0].port" in api_error_message(caught.value)


def test_a_repeated_event_is_one_object_with_a_count(kube_api, namespace: str):
    from kubernetes import client

    from kiban.reconcile.apply import Writer

    custom = client.CustomObjectsApi(kube_api)
    fm = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, model_body("noisy"))
    writer = Writer(kube_api, instance="test-replica")
    for _ in range(5):
        writer.post_event(fm, "Warning", "ScalingFailed", "scaling from 1 to 3 replicas failed: forbidden")
    writer.post_event(fm, "Warning", "ScalingFailed", "scaling from 1 to 4 replicas failed: forbidden")
    events = [e for e in client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
              if e.involved_object.name == "noisy"]
    by_message = {e.message: e for e in events}
    assert len(events) == 2, [(e.message, e.count) for e in events]
    repeated = by_message["scaling from 1 to 3 replicas failed: forbidden"]
    assert repeated.count == 5 and repeated.series.count == 5
    assert repeated.reporting_instance == "test-replica"
    assert repeated.last_timestamp >= repeated.first_timestamp
