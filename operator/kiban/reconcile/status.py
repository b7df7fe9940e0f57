"""Status, rebuilt from the world on every pass.

Pure: what we observed (the workload, its pods, the sizing result, the plan) in, the
FoundationModel's status fields out. The previous status is read for one thing only: keeping a
condition's lastTransitionTime while its status has not changed. The result holds only the
reconciler's own fields (RECONCILER_FIELDS) and conditions (CONDITION_TYPES): run.py applies it
with server-side apply as field manager `kiban`, so the autoscaler's and drift's fields and
conditions, applied by their own managers, are never carried (and never reverted) here.

Rollout failures are Degraded with the container's own reason and message (a crash loop, an
image that cannot be pulled, an OOM kill, a Deployment past its progress deadline), never
"Progressing" forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiban.builders.service import endpoint_url

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Scheduled")
RECONCILER_FIELDS = ("observedGeneration", "replicas", "readyReplicas", "selector", "resolved", "endpoint")
# container waiting reasons that will not resolve by waiting (kubelet's own strings)
STUCK_WAITING = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError")


@dataclass(frozen=True)
class Sizing:
    """Whether the model fits its accelerator profile; when not, message carries the numbers."""

    fits: bool
    message: str = ""
    reason: str = "ModelDoesNotFit"  # or ExceedsNodeGpus, UnknownAcceleratorProfile


@dataclass(frozen=True)
class World:
    """Everything status is computed from, already read by observe.py."""

    generation: int
    sizing: Sizing
    desired_replicas: int
    deployment: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    service_name: str | None = None
    namespace: str = ""
    selector: str = ""
    wrote_children: bool = False
    conflicts: Sequence[str] = ()
    apply_errors: Sequence[str] = field(default=())
    resolved: Mapping[str, Any] | None = None  # status.resolved: GPUs, tensor parallel, image
    unserved: Sequence[str] = ()  # what the spec asks for that this cluster's APIs cannot give
    gateway_url: str | None = None  # through the Kiban gateway: status.endpoint is the gateway's
    # `deployment` is the workload: a Deployment, or a LeaderWorkerSet whose replicas are groups of
    # pods_per_replica pods (its readyReplicas counts groups whose every pod is ready)
    workload_kind: str = "Deployment"
    pods_per_replica: int = 1


def condition(type_: str, status: bool | None, reason: str, message: str, generation: int) -> dict:
    """A condition without lastTransitionTime (merge_conditions fills it in)."""
    value = "Unknown" if status is None else ("True" if status else "False")
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def unschedulable_pods(pods: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(pod name, scheduler message) for each pod the scheduler could not place."""
    found = []
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or ():
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                found.append((pod.get("metadata", {}).get("name", ""), cond.get("message", "")))
    return found


def replica_failure(deployment: Mapping[str, Any] | None) -> str | None:
    """The ReplicaSet controller's message when it cannot create pods (quota, PriorityClass, ...)."""
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or ():
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return cond.get("message") or cond.get("reason") or "pods could not be created"
    return None


def rollout_failure(deployment: Mapping[str, Any] | None,
                    pods: Iterable[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) of a rollout that will not finish by waiting: a container crash-looping,
    OOM-killed or unable to pull its image (the kubelet's reason and message), or the
    Deployment past its progressDeadlineSeconds. None while nothing is stuck."""
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "")
        for status in (pod.get("status") or {}).get("containerStatuses") or ():
            container = status.get("name", "")
            state = status.get("state") or {}
            last = (status.get("lastState") or {}).get("terminated") or {}
            terminated = state.get("terminated") or {}
            waiting = state.get("waiting") or {}
            killed = next((t for t in (terminated, last) if t.get("reason") == "OOMKilled"), None)
            if killed is not None:
                restarts = status.get("restartCount", 0)
                return ("OOMKilled", f"pod {name} container {container} was OOMKilled (exit code "
                                     f"{killed.get('exitCode', 137)}, {restarts} restarts): raise its memory "
                                     "or lower --max-model-len / --gpu-memory-utilization")
            if waiting.get("reason") in STUCK_WAITING:
                detail = waiting.get("message") or ""
                if last.get("reason"):
                    detail = (f"{detail}; " if detail else "") + (
                        f"last exit: {last.get('reason')} (exit code {last.get('exitCode')})"
                        + (f": {last.get('message')}" if last.get("message") else ""))
                return waiting["reason"], f"pod {name} container {container}: {detail or waiting['reason']}"
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Progressing" and cond.get("status") == "False" \
                and cond.get("reason") == "ProgressDeadlineExceeded":
            return "ProgressDeadlineExceeded", cond.get("message") or "the Deployment exceeded its progress deadline"
    return None


def _deployment_counts(deployment: Mapping[str, Any] | None) -> dict[str, int]:
    status = (deployment or {}).get("status") or {}
    spec = (deployment or {}).get("spec") or {}
    return {
        "spec_replicas": int(spec.get("replicas", 1) if deployment else 0),
        "replicas": int(status.get("replicas", 0) or 0),
        "ready": int(status.get("readyReplicas", 0) or 0),
        "updated": int(status.get("updatedReplicas", 0) or 0),
        "available": int(status.get("availableReplicas", 0) or 0),
        "observed_generation": int(status.get("observedGeneration", 0) or 0),
        "generation": int(((deployment or {}).get("metadata") or {}).get("generation", 0) or 0),
    }


def _scheduled(world: World) -> dict:
    gen = world.generation
    if not world.sizing.fits:
        return condition("Scheduled", False, world.sizing.reason, world.sizing.message, gen)
    failure = replica_failure(world.deployment)
    if failure:
        return condition("Scheduled", False, "PodCreationFailed", failure, gen)
    stuck = unschedulable_pods(world.pods)
    if stuck:
        name, message = stuck[0]
        more = f" (and {len(stuck) - 1} more pods)" if len(stuck) > 1 else ""
        return condition("Scheduled", False, "Unschedulable", f"pod {name}: {message}{more}", gen)
    if world.desired_replicas == 0:
        return condition("Scheduled", True, "NoReplicasRequested", "the model is scaled to zero", gen)
    scheduled = sum(1 for pod in world.pods if (pod.get("spec") or {}).get("nodeName"))
    wanted = world.desired_replicas * world.pods_per_replica
    if world.deployment is None or scheduled < wanted:
        return condition("Scheduled", None, "Pending", f"{scheduled} of {wanted} pods scheduled", gen)
    return condition("Scheduled", True, "PodsScheduled", f"{scheduled} pods scheduled", gen)


def _degraded(world: World) -> dict:
    gen = world.generation
    if not world.sizing.fits:
        return condition("Degraded", True, world.sizing.reason, world.sizing.message, gen)
    if world.conflicts:
        return condition("Degraded", True, "ChildConflict", "; ".join(world.conflicts), gen)
    if world.apply_errors:
        return condition("Degraded", True, "ApplyFailed", "; ".join(world.apply_errors), gen)
    stuck = rollout_failure(world.deployment, world.pods)
    if stuck is not None:
        return condition("Degraded", True, stuck[0], stuck[1], gen)
    if world.unserved:
        return condition("Degraded", True, "RouteApiUnavailable", "; ".join(world.unserved), gen)
    return condition("Degraded", False, "AsExpected", "", gen)


def _progressing(world: World, counts: Mapping[str, int]) -> dict:
    gen = world.generation
    if not world.sizing.fits:
        return condition("Progressing", False, world.sizing.reason, world.sizing.message, gen)
    if world.wrote_children or world.deployment is None:
        return condition("Progressing", True, "ChildrenApplied", "applied the desired children", gen)
    if counts["observed_generation"] < counts["generation"]:
        return condition("Progressing", True, "RollingOut",
                         f"the {world.workload_kind} controller has not seen the newest spec", gen)
    if counts["updated"] < counts["spec_replicas"] or counts["replicas"] > counts["spec_replicas"]:
        return condition(
            "Progressing",
            True,
            "RollingOut",
            f"{counts['updated']} of {counts['spec_replicas']} replicas updated",
            gen,
        )
    return condition("Progressing", False, "RolloutComplete", f"the {world.workload_kind} is up to date", gen)


def _ready(world: World, counts: Mapping[str, int], degraded: Mapping[str, Any]) -> dict:
    gen = world.generation
    if degraded["status"] == "True":
        return condition("Ready", False, degraded["reason"], degraded["message"], gen)
    if world.deployment is None:
        kind = world.workload_kind
        return condition("Ready", False, f"{kind}Missing", f"the {kind} has not been created yet", gen)
    if world.desired_replicas == 0:
        return condition("Ready", False, "ScaledToZero", "no replicas are requested", gen)
    ready, wanted = counts["ready"], world.desired_replicas
    up_to_date = counts["updated"] >= wanted and counts["observed_generation"] >= counts["generation"]
    groups = f" (each a group of {world.pods_per_replica} pods)" if world.pods_per_replica > 1 else ""
    if ready >= wanted and up_to_date:
        return condition("Ready", True, "ReplicasReady", f"{ready} of {wanted} replicas ready{groups}", gen)
    return condition("Ready", False, "ReplicasNotReady", f"{ready} of {wanted} replicas ready{groups}", gen)


def merge_conditions(
    new: Iterable[Mapping[str, Any]], previous: Iterable[Mapping[str, Any]], now: str
) -> list[dict]:
    """Stamp lastTransitionTime: kept from `previous` while a condition's status is unchanged."""
    before = {c.get("type"): c for c in previous or ()}
    merged = []
    for cond in new:
        old = before.get(cond["type"])
        same = old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime")
        merged.append({**cond, "lastTransitionTime": old["lastTransitionTime"] if same else now})
    return merged


def build_status(world: World, previous_conditions: Iterable[Mapping[str, Any]], now: str) -> dict:
    """The status fields kiban owns, from the world; `now` is an RFC 3339 timestamp."""
    counts = _deployment_counts(world.deployment)
    degraded = _degraded(world)
    conditions = [
        _ready(world, counts, degraded),
        _progressing(world, counts),
        degraded,
        _scheduled(world),
    ]
    # only our own conditions: the autoscaler's and drift's are theirs to apply (server-side apply
    # keeps each writer's list-map entries apart)
    previous_conditions = [c for c in previous_conditions or () if c.get("type") in CONDITION_TYPES]
    status: dict[str, Any] = {
        "observedGeneration": world.generation,
        "conditions": merge_conditions(conditions, previous_conditions, now),
        "replicas": counts["replicas"],
        "readyReplicas": counts["ready"],
        "selector": world.selector,
    }
    if world.resolved is not None:
        status["resolved"] = dict(world.resolved)
    if world.gateway_url:
        status["endpoint"] = world.gateway_url.rstrip("/") + "/v1"
    elif world.service_name:
        status["endpoint"] = endpoint_url(world.service_name, world.namespace)
    return status


def own_conditions(conditions: Iterable[Mapping[str, Any]] | None) -> list[dict]:
    """The reconciler's conditions out of a whole status list, in CONDITION_TYPES order."""
    by_type = {c.get("type"): dict(c) for c in conditions or ()}
    return [by_type[t] for t in CONDITION_TYPES if t in by_type]


def status_changed(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when applying `new` would change a field the reconciler owns: one of its values, one
    it no longer sets (removed), or one of its conditions. Other writers' fields are not looked at."""
    current = current or {}
    if any(current.get(key) != new.get(key) for key in RECONCILER_FIELDS):
        return True
    return own_conditions(current.get("conditions")) != own_conditions(new.get("conditions"))


def changed_conditions(
    previous: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]
) -> list[dict]:
    """Conditions whose status or reason moved: what deserves an Event."""
    before = {c.get("type"): c for c in previous or ()}
    return [
        dict(c)
        for c in new
        if (old := before.get(c["type"])) is None
        or old.get("status") != c["status"]
        or old.get("reason") != c["reason"]
    ]
