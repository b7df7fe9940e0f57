"""build_status(): conditions rebuilt from plain dicts of the world."""

from __future__ import annotations

from kiban.reconcile.status import (
    Sizing,
    World,
    build_status,
    changed_conditions,
    merge_conditions,
    status_changed,
)

T0 = "2025-01-01T00:00:00Z"
T1 = "2025-01-01T00:05:00Z"
FITS = Sizing(fits=True)


def deployment(replicas=2, ready=2, updated=2, generation=3, observed=3) -> dict:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "observedGeneration": observed,
        },
    }


def pod(name: str, node: str | None = "kiban-h100-0", unschedulable: str | None = None) -> dict:
    conditions = []
    if unschedulable:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    return {"metadata": {"name": name}, "spec": {"nodeName": node}, "status": {"conditions": conditions}}


def conditions_by_type(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def world(**overrides) -> World:
    base = dict(
        generation=7,
        sizing=FITS,
        desired_replicas=2,
        deployment=deployment(),
        pods=[pod("a"), pod("b")],
        service_name="llama",
        namespace="team",
        selector="app.kubernetes.io/instance=llama",
        resolved={"gpusPerReplica": 2, "tensorParallelSize": 2},
    )
    base.update(overrides)
    return World(**base)


def test_all_ready_is_ready_and_not_progressing():
    status = build_status(world(), [], T0)
    by = conditions_by_type(status)
    assert (by["Ready"]["status"], by["Ready"]["reason"]) == ("True", "ReplicasReady")
    assert (by["Progressing"]["status"], by["Progressing"]["reason"]) == ("False", "RolloutComplete")
    assert (by["Degraded"]["status"], by["Scheduled"]["status"]) == ("False", "True")
    assert all(c["observedGeneration"] == 7 for c in status["conditions"])
    assert status["endpoint"] == "http://llama.team.svc:8000/v1"
    assert status["selector"] == "app.kubernetes.io/instance=llama"
    assert (status["replicas"], status["readyReplicas"], status["observedGeneration"]) == (2, 2, 7)
    assert status["resolved"] == {"gpusPerReplica": 2, "tensorParallelSize": 2}


def test_unschedulable_pod_gives_scheduled_false_with_scheduler_message():
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    status = build_status(
        world(deployment=deployment(ready=1), pods=[pod("a"), pod("b", None, message)]), [], T0
    )
    by = conditions_by_type(status)
    assert (by["Scheduled"]["status"], by["Scheduled"]["reason"]) == ("False", "Unschedulable")
    assert message in by["Scheduled"]["message"] and "pod b" in by["Scheduled"]["message"]
    assert (by["Ready"]["status"], by["Ready"]["message"]) == ("False", "1 of 2 replicas ready")


def test_model_that_does_not_fit_is_degraded_with_numbers():
    message = "needs 160 GiB per replica, the profile offers 8 x 80 GiB"
    status = build_status(world(sizing=Sizing(False, message), deployment=None, pods=[], resolved=None), [], T0)
    by = conditions_by_type(status)
    for type_ in ("Degraded",):
        assert (by[type_]["status"], by[type_]["reason"], by[type_]["message"]) == ("True", "ModelDoesNotFit", message)
    assert (by["Scheduled"]["status"], by["Ready"]["status"]) == ("False", "False")
    assert "resolved" not in status


def test_rolling_out_is_progressing():
    status = build_status(world(deployment=deployment(updated=1, generation=4, observed=4)), [], T0)
    by = conditions_by_type(status)
    assert (by["Progressing"]["status"], by["Progressing"]["reason"]) == ("True", "RollingOut")
    assert by["Ready"]["status"] == "False"


def test_deployment_controller_behind_is_progressing():
    by = conditions_by_type(build_status(world(deployment=deployment(generation=5, observed=4)), [], T0))
    assert (by["Progressing"]["status"], by["Progressing"]["reason"]) == ("True", "RollingOut")


def test_writes_this_pass_are_progressing():
    by = conditions_by_type(build_status(world(wrote_children=True), [], T0))
    assert (by["Progressing"]["status"], by["Progressing"]["reason"]) == ("True", "ChildrenApplied")


def test_conflicting_child_is_degraded():
    by = conditions_by_type(build_status(world(conflicts=["Service/llama exists but is not ours"]), [], T0))
    assert (by["Degraded"]["reason"], by["Ready"]["reason"]) == ("ChildConflict", "ChildConflict")


def test_scaled_to_zero_is_not_ready_but_scheduled():
    status = build_status(world(desired_replicas=0, deployment=deployment(0, 0, 0), pods=[]), [], T0)
    by = conditions_by_type(status)
    assert (by["Ready"]["status"], by["Ready"]["reason"]) == ("False", "ScaledToZero")
    assert (by["Scheduled"]["status"], by["Scheduled"]["reason"]) == ("True", "NoReplicasRequested")


def test_last_transition_time_kept_while_status_unchanged():
    first = build_status(world(), [], T0)
    second = build_status(world(), first["conditions"], T1)
    assert [c["lastTransitionTime"] for c in second["conditions"]] == [T0] * 4
    assert not status_changed(first, second)
    moved = build_status(world(deployment=deployment(ready=1)), first["conditions"], T1)
    by = conditions_by_type(moved)
    assert by["Ready"]["lastTransitionTime"] == T1 and by["Degraded"]["lastTransitionTime"] == T0
    assert status_changed(first, moved)
    assert [c["type"] for c in changed_conditions(first["conditions"], moved["conditions"])] == ["Ready"]


def test_merge_conditions_stamps_new_types():
    merged = merge_conditions([{"type": "Ready", "status": "True"}], [], T1)
    assert merged == [{"type": "Ready", "status": "True", "lastTransitionTime": T1}]


def test_pods_that_cannot_be_created_are_reported():
    failing = deployment(ready=0)
    failing["status"]["conditions"] = [{
        "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
        "message": "pods is forbidden: no PriorityClass with name inference-high was found",
    }]
    by = conditions_by_type(build_status(world(deployment=failing, pods=[]), [], T0))
    assert (by["Scheduled"]["status"], by["Scheduled"]["reason"]) == ("False", "PodCreationFailed")
    assert "PriorityClass" in by["Scheduled"]["message"]


def test_only_the_reconcilers_own_conditions_are_written():
    """Server-side apply keeps each writer's conditions: carrying the autoscaler's (from a copy
    read earlier) is how a stale one used to be written back."""
    autoscaler = {"type": "MetricsAvailable", "status": "False", "reason": "PrometheusUnreachable",
                  "message": "", "lastTransitionTime": T0}
    status = build_status(world(), [autoscaler], T1)
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded", "Scheduled"}
    current = {**status, "conditions": [*status["conditions"], autoscaler], "scaling": {"desiredReplicas": 3}}
    assert not status_changed(current, status)  # another writer's fields are no change of ours
    assert status_changed({k: v for k, v in current.items() if k != "resolved"}, status)


def crashing(reason="CrashLoopBackOff", message="back-off 5m0s restarting failed container=vllm", last=None):
    p = pod("a")
    p["status"]["containerStatuses"] = [{
        "name": "vllm", "restartCount": 6, "state": {"waiting": {"reason": reason, "message": message}},
        "lastState": {"terminated": last} if last else {},
    }]
    return p


def test_rollout_failures_are_degraded_with_the_containers_reason_and_message():
    # the kubelet's own strings (pkg/kubelet/images and kuberuntime), not Kiban's
    cases = [
        (crashing(last={"reason": "Error", "exitCode": 1, "message": "CUDA out of memory"}), "CrashLoopBackOff",
         "last exit: Error (exit code 1): CUDA out of memory"),
        (crashing("ImagePullBackOff", 'Back-off pulling image "vllm/vllm-openai:v9"'), "ImagePullBackOff",
         'Back-off pulling image "vllm/vllm-openai:v9"'),
        (crashing("ErrImagePull", "rpc error: code = NotFound"), "ErrImagePull", "code = NotFound"),
        (crashing(last={"reason": "OOMKilled", "exitCode": 137}), "OOMKilled", "OOMKilled (exit code 137, 6 restarts)"),
    ]
    for failing_pod, reason, words in cases:
        by = conditions_by_type(build_status(world(deployment=deployment(ready=1), pods=[pod("b"), failing_pod]),
                                             [], T0))
        assert (by["Degraded"]["status"], by["Degraded"]["reason"]) == ("True", reason), by["Degraded"]
        assert words in by["Degraded"]["message"] and "pod a container vllm" in by["Degraded"]["message"]
        assert (by["Ready"]["status"], by["Ready"]["reason"]) == ("False", reason)
    late = deployment(ready=0)
    late["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                     "message": 'ReplicaSet "llama-7d9" has timed out progressing.'}]
    by = conditions_by_type(build_status(world(deployment=late, pods=[]), [], T0))
    assert (by["Degraded"]["reason"], by["Degraded"]["message"]) == (
        "ProgressDeadlineExceeded", 'ReplicaSet "llama-7d9" has timed out progressing.')


def test_a_container_still_creating_is_not_a_failure():
    by = conditions_by_type(build_status(world(pods=[crashing("ContainerCreating", "")]), [], T0))
    assert by["Degraded"]["status"] == "False"


def test_a_route_the_cluster_cannot_serve_is_said_in_degraded():
    message = "spec.exposure.route is true but route.openshift.io/v1 is not served here: no Route was created"
    by = conditions_by_type(build_status(world(unserved=[message]), [], T0))
    assert (by["Degraded"]["status"], by["Degraded"]["reason"], by["Degraded"]["message"]) == (
        "True", "RouteApiUnavailable", message)
