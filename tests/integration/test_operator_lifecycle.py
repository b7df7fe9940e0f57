"""The operator, as a real process, against the real control plane (kube-apiserver, etcd,
controller-manager, scheduler, kwok GPU nodes).

Each test gets a fresh namespace and its own `python -m kiban run --standalone -n NS` process;
CRDs come from crds/ (applied once per session with the pinned kubectl).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml

from support import (
    FM_GROUP,
    FM_PLURAL,
    FM_VERSION,
    REPO,
    Cluster,
    OperatorProcess,
    condition_is,
    kubectl,
    model_body,
    ready_with_running_pods,
)
from support import wait_for as _wait_for

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "examples"


# ----------------------------------------------------------------------------- helpers
# model_body, Cluster, condition_is and ready_with_running_pods are in support.py (the operator
# image's test uses them too)

wait_for = partial(_wait_for, interval=0.25)  # this file polls every 0.25 s


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def cluster(kube_api, namespace: str, crds: Path) -> Cluster:
    return Cluster(kube_api, namespace)


@pytest.fixture
def operator(crds: Path, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    with OperatorProcess(crds, namespace, tmp_path / "operator.log") as process:
        yield process


# ----------------------------------------------------------------------------- tests


def test_model_becomes_ready_with_owned_children_and_status(cluster: Cluster, operator: OperatorProcess):
    created = cluster.create_model(model_body("qwen"))
    ready_with_running_pods(cluster, "qwen", operator)
    model = cluster.model("qwen")
    status = model["status"]
    assert status["endpoint"] == f"http://qwen.{cluster.namespace}.svc:8000/v1"
    assert status["readyReplicas"] == 1 and status["replicas"] == 1
    assert status["selector"] and status["observedGeneration"] == model["metadata"]["generation"]
    assert status["resolved"]["gpusPerReplica"] == 1
    deployment = cluster.deployment("qwen")
    assert deployment.metadata.owner_references[0].uid == created["metadata"]["uid"]
    assert deployment.metadata.labels["app.kubernetes.io/managed-by"] == "kiban"
    assert deployment.metadata.annotations["kiban.dev/spec-hash"]
    assert {f.manager for f in deployment.metadata.managed_fields if f.operation == "Apply"} == {"kiban"}
    pods = [p for p in cluster.pods() if p.status.phase == "Running"]
    assert len(pods) == 1 and pods[0].spec.node_name.startswith("kiban-l4-")
    assert cluster.events("Created"), "no Created Event on the FoundationModel"
    # watch events only, no per-model timer (autoscaling is off): no kopf finalizer or bookkeeping
    # annotations, i.e. no extra write per model and deletion never waits for the operator
    assert not model["metadata"].get("finalizers")
    assert not [k for k in model["metadata"].get("annotations") or {} if k.startswith("kiban.dev/")]


def test_spec_change_rolls_the_deployment(cluster: Cluster, operator: OperatorProcess):
    cluster.create_model(model_body("roll"))
    ready_with_running_pods(cluster, "roll", operator)
    old_hash = cluster.deployment("roll").metadata.annotations["kiban.dev/spec-hash"]
    cluster.patch_model("roll", {"spec": {"engine": {"maxNumSeqs": 64}}})
    wait_for(
        lambda: cluster.deployment("roll").metadata.annotations["kiban.dev/spec-hash"] != old_hash,
        30, what="a new spec-hash",
    )
    args = cluster.deployment("roll").spec.template.spec.containers[0].args
    assert "64" in " ".join(args)
    wait_for(lambda: len(cluster.replica_sets("roll")) == 2, 30, what="a second ReplicaSet")
    ready_with_running_pods(cluster, "roll", operator)
    assert cluster.events("Updated"), "no Updated Event"


def test_edited_child_is_put_back(cluster: Cluster, operator: OperatorProcess):
    cluster.create_model(model_body("edit"))
    ready_with_running_pods(cluster, "edit", operator)
    want = cluster.deployment("edit").spec.template.spec.containers[0].image
    cluster.apps.patch_namespaced_deployment(
        "edit", cluster.namespace,
        {"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "vllm", "image": "evil:latest"}]}}}},
    )
    wait_for(
        lambda: (d := cluster.deployment("edit")).spec.template.spec.containers[0].image == want
        and d.spec.replicas == 1,
        30, what="the image and replicas put back",
    )


def test_unlabelled_user_object_with_a_childs_name_is_refused_and_left_untouched(
    cluster: Cluster, operator: OperatorProcess
):
    """The operator's cache sees only labelled children: its create must not take the user's Service over."""
    mine = cluster.core.create_namespaced_service(cluster.namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken"},
        "spec": {"selector": {"app": "mine"}, "ports": [{"name": "web", "port": 1234, "targetPort": 4321}]},
    })
    cluster.create_model(model_body("taken"))
    cond = wait_for(condition_is(cluster, "taken", "Degraded", "True", "ApplyFailed"), 30, what="ApplyFailed")
    assert "Service/taken refused" in cond["message"], cond
    service = cluster.core.read_namespaced_service("taken", cluster.namespace)
    assert not service.metadata.owner_references
    assert not (service.metadata.labels or {}).get("app.kubernetes.io/managed-by")
    assert [(p.name, p.port) for p in service.spec.ports] == [("web", 1234)]
    assert service.spec.selector == {"app": "mine"}
    assert service.metadata.resource_version == mine.metadata.resource_version
    # the model's other children are still created
    wait_for(lambda: cluster.deployment("taken"), 30, what="the Deployment")


def test_scale_subresource_sets_deployment_replicas(cluster: Cluster, operator: OperatorProcess, crds: Path):
    cluster.create_model(model_body("scaled"))
    ready_with_running_pods(cluster, "scaled", operator)
    kubectl(crds, "-n", cluster.namespace, "scale", "fm/scaled", "--replicas=3")
    wait_for(lambda: cluster.deployment("scaled").spec.replicas == 3, 30, what="Deployment replicas 3")
    wait_for(lambda: cluster.model("scaled")["status"].get("readyReplicas") == 3, 60, what="3 ready replicas")
    scale = json.loads(kubectl(crds, "-n", cluster.namespace, "get", "--raw",
                               f"/apis/kiban.dev/v1alpha1/namespaces/{cluster.namespace}/foundationmodels/scaled/scale").stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3


def test_impossible_gpu_request_is_degraded_and_writes_nothing(cluster: Cluster, operator: OperatorProcess):
    cluster.create_model(model_body("huge", model={"uri": "hf://org/big", "parameters": "900B"}))
    cond = wait_for(condition_is(cluster, "huge", "Degraded", "True", "ModelDoesNotFit"), 30, what="ModelDoesNotFit")
    assert "GiB" in cond["message"]
    assert cluster.deployment("huge") is None
    wait_for(lambda: cluster.events("ModelDoesNotFit"), 15, what="a ModelDoesNotFit Event")


def test_pods_without_room_are_reported_unschedulable(cluster: Cluster, operator: OperatorProcess):
    # 4 L4 GPUs per replica (a whole node) x 8 replicas: more than the 3 L4 nodes hold
    cluster.create_model(model_body(
        "crowded", accelerator={"profile": "nvidia-l4", "gpusPerReplica": 4},
        scaling={"minReplicas": 8, "maxReplicas": 8},
    ))
    cond = wait_for(condition_is(cluster, "crowded", "Scheduled", "False", "Unschedulable"), 60, what="Scheduled=False")
    assert "nvidia.com/gpu" in cond["message"]
    assert condition_is(cluster, "crowded", "Ready", "False")()


def test_deletion_removes_children_and_restart_creates_no_duplicates(cluster: Cluster, operator: OperatorProcess):
    cluster.create_model(model_body("keep"))
    ready_with_running_pods(cluster, "keep", operator)
    first_uid = cluster.deployment("keep").metadata.uid
    operator.stop()
    operator.start()
    time.sleep(3)  # let the restarted operator resume; it must adopt, not recreate
    ready_with_running_pods(cluster, "keep", operator)
    assert cluster.deployment("keep").metadata.uid == first_uid
    assert len(cluster.replica_sets("keep")) == 1
    cluster.custom.delete_namespaced_custom_object(FM_GROUP, FM_VERSION, cluster.namespace, FM_PLURAL, "keep")
    wait_for(lambda: cluster.deployment("keep") is None, 60, what="the Deployment garbage-collected")
    services = cluster.core.list_namespaced_service(cluster.namespace).items
    wait_for(lambda: not cluster.core.list_namespaced_service(cluster.namespace).items, 60,
             what=f"Services garbage-collected (had {[s.metadata.name for s in services]})")


INVALID_SPECS = [
    ({"scaling": {"minReplicas": 3, "maxReplicas": 2}}, "minReplicas"),
    ({"accelerator": {"profile": "nvidia-l4", "tensorParallelSize": 3}}, "tensorParallelSize"),
    ({"model": {"uri": "ftp://nowhere/model"}}, "uri"),
]


@pytest.mark.parametrize(("overrides", "field"), INVALID_SPECS, ids=[f for _, f in INVALID_SPECS])
def test_invalid_spec_is_rejected_by_the_api_server_naming_the_field(cluster: Cluster, overrides: dict, field: str):
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as info:
        cluster.create_model(model_body("bad", **copy.deepcopy(overrides)))
    assert info.value.status == 422
    assert field in info.value.body


def example_models() -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "FoundationModel":
                found.append((path, doc))
    return found


def claims_the_examples_expect(examples: list[tuple[Path, dict]]) -> set[str]:
    """PVCs the examples mount but do not own (pvc:// model and adapter sources)."""
    claims = set()
    for _, doc in examples:
        spec = doc["spec"]
        uris = [spec["model"]["uri"], *(a["uri"] for a in spec.get("adapters", []))]
        claims.update(u.removeprefix("pvc://").split("/")[0] for u in uris if u.startswith("pvc://"))
    return claims


@pytest.fixture
def static_volumes(cluster: Cluster) -> Iterator[Callable[[int], None]]:
    """hostPath PersistentVolumes (no provisioner runs here), so claims bind; deleted afterwards."""
    created: list[str] = []

    def make(count: int) -> None:
        for index in range(count):
            name = f"{cluster.namespace}-pv-{index}"[:63]
            cluster.core.create_persistent_volume({
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "1Ti"},
                    "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
                    "hostPath": {"path": f"/tmp/{name}"},
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": "",
                },
            })
            created.append(name)

    yield make
    for name in created:
        cluster.core.delete_persistent_volume(name)


def workload_template(cluster: Cluster, model: dict) -> dict:
    """The pod template of a model's Deployment, or of its LeaderWorkerSet's leaders (multi-node)."""
    if (model["status"].get("resolved") or {}).get("nodesPerReplica", 1) > 1:
        group_set = cluster.custom.get_namespaced_custom_object(
            "leaderworkerset.x-k8s.io", "v1", cluster.namespace, "leaderworkersets", f"{model['metadata']['name']}-group")
        return group_set["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    name = model["status"]["endpoint"].split("//")[1].split(".")[0]
    return cluster.apps.api_client.sanitize_for_serialization(cluster.deployment(name).spec.template)


def test_every_example_reaches_ready_on_matching_gpu_nodes(
    cluster: Cluster, leaderworkerset: Path, operator: OperatorProcess, crds: Path, static_volumes
):
    examples = example_models()
    assert examples, "examples/ holds no FoundationModel"
    user_claims = claims_the_examples_expect(examples)
    static_volumes(len(user_claims) + len(examples))
    for claim in user_claims:  # the user's own volumes (model store, adapters), as a user would have them
        cluster.core.create_namespaced_persistent_volume_claim(cluster.namespace, {
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}},
                     "storageClassName": ""},
        })
    for priority_class in {d["spec"].get("scheduling", {}).get("priorityClassName") for _, d in examples} - {None}:
        kubectl(crds, "apply", "-f", "-", input_text=yaml.safe_dump({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": priority_class}, "value": 1000,
        }))
    for path in sorted({p for p, _ in examples}):
        kubectl(crds, "-n", cluster.namespace, "apply", "-f", str(path))
    nodes = {n.metadata.name: n for n in cluster.core.list_node().items}
    for path, doc in examples:
        name = doc["metadata"]["name"]
        if doc["spec"].get("scaling", {}).get("minReplicas") == 0:  # scaled to zero: ask for one
            kubectl(crds, "-n", cluster.namespace, "scale", f"fm/{name}", "--replicas=1")
        ready_with_running_pods(cluster, name, operator, timeout=120)
        selector = workload_template(cluster, cluster.model(name))["spec"].get("nodeSelector") or {}
        assert selector, f"{path.name}: no nodeSelector for the accelerator"
        pods = [p for p in cluster.pods() if p.metadata.labels.get("app.kubernetes.io/instance") == name]
        assert pods and all(p.status.phase == "Running" for p in pods), f"{path.name}: pods not Running"
        for pod in pods:
            labels = nodes[pod.spec.node_name].metadata.labels
            assert all(labels.get(k) == v for k, v in selector.items()), f"{path.name}: {pod.metadata.name} on a wrong node"


def test_a_route_without_the_route_api_is_said_in_degraded(cluster: Cluster, operator: OperatorProcess):
    """route: true on a cluster without route.openshift.io used to do nothing and say nothing."""
    cluster.create_model(model_body("routed", exposure={"route": True}))
    cond = wait_for(condition_is(cluster, "routed", "Degraded", "True", "RouteApiUnavailable"), 30,
                    what="Degraded=True RouteApiUnavailable")
    assert "route.openshift.io/v1 is not served" in cond["message"] and "spec.exposure.route" in cond["message"]
    assert condition_is(cluster, "routed", "Ready", "False", "RouteApiUnavailable")()
    wait_for(lambda: cluster.deployment("routed"), 30, what="the rest of the model still deployed")
    wait_for(lambda: cluster.events("RouteApiUnavailable"), 15, what="a Warning Event")


def test_a_crash_looping_container_is_degraded_with_the_kubelets_reason(cluster: Cluster, operator: OperatorProcess):
    """The pod's status says CrashLoopBackOff (written here as a kubelet would: kwok runs no
    containers); the model must say Degraded with that reason and message, not Progressing forever."""
    cluster.create_model(model_body("crashy"))
    ready_with_running_pods(cluster, "crashy", operator)
    pod = next(p for p in cluster.pods() if p.metadata.labels.get("app.kubernetes.io/instance") == "crashy")
    status = {"status": {"containerStatuses": [{
        "name": "vllm", "image": "vllm/vllm-openai:v0.33.0", "imageID": "", "ready": False, "restartCount": 4,
        "started": False,
        "state": {"waiting": {"reason": "CrashLoopBackOff",
                              "message": "back-off 1m20s restarting failed container=vllm pod=crashy"}},
        "lastState": {"terminated": {"reason": "Error", "exitCode": 1, "message": "ValueError: bad --max-model-len",
                                     "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:05Z"}},
    }]}}
    cluster.core.patch_namespaced_pod_status(pod.metadata.name, cluster.namespace, status)
    cond = wait_for(condition_is(cluster, "crashy", "Degraded", "True", "CrashLoopBackOff"), 30,
                    what="Degraded=True CrashLoopBackOff")
    assert f"pod {pod.metadata.name} container vllm" in cond["message"]
    assert "back-off 1m20s" in cond["message"] and "ValueError: bad --max-model-len" in cond["message"]
    assert condition_is(cluster, "crashy", "Ready", "False", "CrashLoopBackOff")()
