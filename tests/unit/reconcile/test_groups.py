"""A multi-node model in the reconciler: a replica is a LeaderWorkerSet group, ready only when whole."""

from __future__ import annotations

from kiban.api.v1alpha1 import Dtype, Quantization, parameter_count
from kiban.config import BUILTIN_PROFILES
from kiban.reconcile import observe
from kiban.reconcile.plan import Action, Plan
from kiban.reconcile.run import missing_workload_api, write_stages
from kiban.reconcile.status import Sizing, World, build_status
from kiban.sizing.gpu import size_gpus

T0 = "2025-01-01T00:00:00Z"
H100 = next(p for p in BUILTIN_PROFILES if p.name == "nvidia-h100-80gb")
LWS_API = frozenset({"leaderworkerset.x-k8s.io/v1"})


def sizing(parameters: str):
    return size_gpus(parameters=parameter_count(parameters), dtype=Dtype.bfloat16, quantization=Quantization.none,
                     profile=H100, gpu_memory_utilization=0.9)


def group_set(replicas=2, ready=2, updated=2, status_replicas=None) -> dict:
    """A LeaderWorkerSet as the LWS controller reports it: counts are groups, not pods."""
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
        "metadata": {"name": "big-group", "generation": 2},
        "spec": {"replicas": replicas, "leaderWorkerTemplate": {"size": 2}},
        "status": {"replicas": replicas if status_replicas is None else status_replicas, "readyReplicas": ready,
                   "updatedReplicas": updated, "observedGeneration": 2},
    }


def pod(name: str, node: str | None) -> dict:
    return {"metadata": {"name": name}, "spec": {"nodeName": node}, "status": {"conditions": []}}


def world(lws, pods, desired=2) -> World:
    return World(generation=5, sizing=Sizing(True), desired_replicas=desired, deployment=lws, pods=pods,
                 service_name="big", namespace="ns", workload_kind="LeaderWorkerSet", pods_per_replica=2)


def conditions(status: dict) -> dict:
    return {c["type"]: c for c in status["conditions"]}


def test_ready_counts_whole_groups_and_says_so():
    pods = [pod(f"big-group-{g}{w}", f"kiban-h100-{2 * g + i}") for g in range(2) for i, w in enumerate(("", "-1"))]
    by = conditions(build_status(world(group_set(), pods), [], T0))
    assert (by["Ready"]["status"], by["Ready"]["message"]) == ("True", "2 of 2 replicas ready (each a group of 2 pods)")
    assert by["Scheduled"]["message"] == "4 pods scheduled"


def test_a_group_with_a_pod_not_ready_is_not_a_ready_replica():
    # the LWS controller counts group 1 unready while its worker is not: 1 ready group of 2
    status = build_status(world(group_set(ready=1), [pod("a", "n0"), pod("b", "n1"), pod("c", "n2"), pod("d", None)]),
                          [], T0)
    by = conditions(status)
    assert status["readyReplicas"] == 1
    assert (by["Ready"]["status"], by["Ready"]["reason"]) == ("False", "ReplicasNotReady")
    assert by["Scheduled"]["status"] == "Unknown" and by["Scheduled"]["message"] == "3 of 4 pods scheduled"


def test_a_surge_group_is_progressing_and_a_missing_set_is_named():
    by = conditions(build_status(world(group_set(status_replicas=3, updated=1), []), [], T0))
    assert (by["Progressing"]["status"], by["Progressing"]["reason"]) == ("True", "RollingOut")
    missing = conditions(build_status(world(None, []), [], T0))
    assert (missing["Ready"]["reason"], missing["Ready"]["message"]) == (
        "LeaderWorkerSetMissing", "the LeaderWorkerSet has not been created yet")


def test_ready_replicas_reads_the_workload_of_the_layout():
    deployment = {"kind": "Deployment", "status": {"readyReplicas": 3}}
    children = [deployment, group_set(ready=1)]  # mid-switch: both exist
    assert observe.ready_replicas(children, multi_node=True) == 1
    assert observe.ready_replicas(children, multi_node=False) == 3
    assert observe.ready_replicas([], multi_node=True) == 0


def test_the_group_set_is_written_first_like_a_deployment():
    obj = lambda kind: {"apiVersion": "v1", "kind": kind, "metadata": {"name": "m"}}  # noqa: E731
    the_plan = Plan(creates=(Action("create", obj("Service"), "new"), Action("create", obj("LeaderWorkerSet"), "new")),
                    deletes=(Action("delete", obj("Deployment"), "replaced"),))
    stages = [[a.kind for a in stage.actions] for stage in write_stages(the_plan)]
    assert stages == [["LeaderWorkerSet"], ["Service"], ["Deployment"]]  # the old Deployment goes last


def test_a_multi_node_model_without_the_lws_api_is_refused_with_the_numbers():
    big = sizing("405B")
    assert big.multi_node
    message = missing_workload_api(big, frozenset())
    assert "leaderworkerset.x-k8s.io/v1" in message and "2 nodes" in message and "1152.0 GiB" in message
    assert missing_workload_api(big, LWS_API) is None
    assert missing_workload_api(sizing("70B"), frozenset()) is None  # one node: a Deployment needs nothing


def test_a_single_node_cache_cannot_serve_a_group_spread_over_nodes():
    from kiban.api.v1alpha1 import FoundationModel
    from kiban.reconcile.run import workload_blocked

    def fm(cache: dict) -> FoundationModel:
        return FoundationModel.from_object({
            "apiVersion": "kiban.dev/v1alpha1", "kind": "FoundationModel", "metadata": {"name": "big"},
            "spec": {"model": {"uri": "hf://o/m", "parameters": "405B"}, "accelerator": {"profile": "nvidia-h100-80gb"},
                     "scaling": {"autoscaling": False}, "cache": cache}})

    rwo = fm({"type": "pvc", "size": "1Ti", "accessMode": "ReadWriteOnce"})
    reason, message = workload_blocked(rwo, sizing("405B"), LWS_API)
    assert reason == "CacheNotShareable" and "spec.cache.accessMode ReadWriteOnce" in message
    assert workload_blocked(fm({"type": "pvc", "size": "1Ti", "accessMode": "ReadWriteMany"}), sizing("405B"), LWS_API) is None
    assert workload_blocked(fm({}), sizing("405B"), LWS_API) is None  # an emptyDir per pod
    assert workload_blocked(rwo, sizing("70B"), frozenset()) is None  # one node: no group
    assert workload_blocked(fm({}), sizing("405B"), frozenset())[0] == "LeaderWorkerSetNotServed"


def test_the_lws_api_is_discovered_and_indexed_as_an_optional_child():
    resource = next(c for c in observe.CHILD_RESOURCES if c.plural == "leaderworkersets")
    assert (resource.group, resource.version, resource.optional) == ("leaderworkerset.x-k8s.io", "v1", True)
    assert "leaderworkerset.x-k8s.io" in observe.OPTIONAL_GROUPS
