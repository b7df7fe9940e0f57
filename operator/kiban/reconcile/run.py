"""One reconcile pass for one FoundationModel, and the per-operator context it runs in.

Entry point: `await reconcile(context, ref, indexes, trigger=...)`.
Every kopf handler (create, update, resume, the resync timer, a child's or pod's change) calls
it; passes for the same model are serialised and coalesced by `ReconcileGate`, and a pass always
reads the newest FoundationModel body kopf has seen (the models index), never a stale one.

A pass: parse the spec -> size GPUs -> build the desired children (builders, pure, already
owned and spec-hashed) -> plan against the cached children (pure) -> apply (writes, in a worker thread) ->
rebuild status from the world (pure) and apply the reconciler's part of it (server-side apply
on /status as field manager `kiban`, only its own fields and conditions) when it changed ->
Events and metrics. After a resync (kiban.reconcile.resync) the pass reads the model, children
and pods the resync listed instead of kopf's cache, which can hold a child deleted while a
watch was down.

Replica ownership: the FoundationModel's spec.scaling.replicas (its scale subresource) is the
one replica knob. `kubectl scale fm/x`, an HPA, and Kiban's own autoscaler all write it; the
Deployment's replicas are always applied from it (default: minReplicas). A hand edit of the
Deployment's replicas is therefore put back, like any other field we set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.leaderworkerset import LWS_API_VERSION, shared_cache_problem
from kiban.builders.names import label_value
from kiban.clock import rfc3339
from kiban.config import ConfigError, OperatorConfig
from kiban.metrics import ModelKey, OperatorMetrics
from kiban.reconcile import observe
from kiban.reconcile.apply import ApplyResult, Writer, api_error_message
from kiban.reconcile.logfmt import kv
from kiban.reconcile.pool import BEST_EFFORT, NORMAL, URGENT, PriorityExecutor
from kiban.reconcile.plan import Plan, child_key, describe, plan
from kiban.reconcile.status import (
    Sizing,
    World,
    build_status,
    changed_conditions,
    own_conditions,
    status_changed,
)

log = logging.getLogger("kiban.reconcile")

ModelRef = tuple[str, str]
IO_THREADS = 32  # blocking API calls in flight at once (the ApiClient's pool holds as many connections)
# Condition transitions a user wants to see as Events: (type, status) -> event type
EVENT_WORTHY = {
    ("Scheduled", "False"): "Warning",
    ("Degraded", "True"): "Warning",
    ("Ready", "True"): "Normal",
}


class ReconcileGate:
    """Serialises passes per model and folds requests that arrive while one is queued.

    A request that finds another one waiting (not yet started) is dropped: the waiting pass
    reads the newest body and cache when it starts, so it covers both.
    """

    def __init__(self) -> None:
        self._locks: dict[ModelRef, asyncio.Lock] = {}
        self._queued: set[ModelRef] = set()

    async def run(self, ref: ModelRef, work: Callable[[], Awaitable[Any]]) -> Any | None:
        if ref in self._queued:
            return None
        self._queued.add(ref)
        lock = self._locks.setdefault(ref, asyncio.Lock())
        async with lock:
            self._queued.discard(ref)
            return await work()

    def forget(self, ref: ModelRef) -> None:
        lock = self._locks.get(ref)
        if lock is not None and not lock.locked() and ref not in self._queued:
            del self._locks[ref]


@dataclass
class OperatorContext:
    """What one operator instance shares between passes (kopf's memo carries it)."""

    config: OperatorConfig
    writer: Writer
    discovery: observe.ApiDiscovery
    metrics: OperatorMetrics
    gate: ReconcileGate = field(default_factory=ReconcileGate)
    # blocking API calls; the Deployment's apply first, Events last (kiban.reconcile.pool)
    executor: PriorityExecutor = field(default_factory=lambda: PriorityExecutor(IO_THREADS, "kiban-io"))
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # what our own writes returned, per model, until the watch delivers them (observe.overlay_applied),
    # and when each was written (a resync's list taken later supersedes it)
    applied: dict[ModelRef, dict[Any, dict[str, Any]]] = field(default_factory=dict)
    applied_at: dict[ModelRef, dict[Any, float]] = field(default_factory=dict)
    # the operator-wide reconcile queue (kiban.reconcile.queue.WorkQueue), set by kiban.handlers
    queue: Any = None
    # the per-operator kiban.autoscale.model_pass.Autoscaler; None: autoscaling is off operator-wide
    autoscaler: Any = None
    # fresh reads for the resync (observe.Lister) and what it listed, per model, for its next pass
    lister: Any = None
    listed: dict[ModelRef, observe.View] = field(default_factory=dict)
    # kopf's live indexes, kept by the startup handler for the background tasks (resync, autoscaler)
    indexes: Mapping[str, Any] = field(default_factory=dict)
    # whether this replica holds the leader Lease (kiban.reconcile.leader): only the leader writes
    leading: bool = False

    def forget(self, ref: ModelRef) -> None:
        """Drop per-model state of a deleted FoundationModel."""
        self.gate.forget(ref)
        self.applied.pop(ref, None)
        self.applied_at.pop(ref, None)
        self.desired_cache.pop(ref, None)
        self.listed.pop(ref, None)
        if self.queue is not None:
            self.queue.forget(ref)

    # per model: (inputs, what they built), so passes triggered by child and pod events skip
    # the builders and hashing while the model's spec is unchanged (desired_for)
    desired_cache: dict[ModelRef, tuple[Any, Any]] = field(default_factory=dict)

    async def io(self, fn: Callable[..., Any], *args: Any, priority: int = NORMAL) -> Any:
        """Run a blocking API call in the I/O pool."""
        return await asyncio.wrap_future(self.executor.submit_at(priority, fn, *args))

    def post_event_later(self, fm: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        """Post an Event without waiting for it, after the pool's other calls."""
        self.executor.submit_at(BEST_EFFORT, _post_event_quietly, self.writer, dict(fm), event_type, reason, message)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _post_event_quietly(writer: Writer, fm: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
    try:
        writer.post_event(fm, event_type, reason, message)
    except Exception as exc:  # noqa: BLE001 - a lost Event must not be lost silently, nor raise
        log.warning(kv("Failed to post Event", reason=reason, name=fm["metadata"]["name"],
                       namespace=fm["metadata"]["namespace"], error=f"{type(exc).__name__}: {exc}"))


@dataclass
class Outcome:
    """What a pass did, for handlers (retry on errors) and tests."""

    plan: Plan | None = None
    errors: list[str] = field(default_factory=list)
    status: dict[str, Any] | None = None
    skipped: bool = False



def selector_string(deployment: Mapping[str, Any] | None) -> str:
    labels = ((deployment or {}).get("spec") or {}).get("selector", {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def resolved_status(model: FoundationModel, config: OperatorConfig, sizing: Any) -> dict[str, Any]:
    return {
        "accelerator": model.spec.accelerator.profile,
        "gpusPerReplica": sizing.gpus_per_replica,
        "tensorParallelSize": sizing.tensor_parallel_size,
        "pipelineParallelSize": sizing.pipeline_parallel_size,
        "nodesPerReplica": sizing.nodes_per_replica,
        "image": model.spec.engine.image or config.vllm_image,
        "servedModelName": model.served_model_name,
        "sizingReason": str(sizing.reason),
        "sizingMessage": sizing.message,
        "gateway": model.spec.exposure.through_gateway(config.gateway_default),
    }


def missing_workload_api(sizing: Any, served: frozenset[str]) -> str | None:
    """Why the workload cannot be created (a multi-node model without the LeaderWorkerSet API), or None."""
    if not sizing.multi_node or LWS_API_VERSION in served:
        return None
    return (f"one replica needs {sizing.nodes_per_replica} nodes ({sizing.message}); a replica that spans "
            f"nodes is a LeaderWorkerSet group, and this cluster does not serve {LWS_API_VERSION}: "
            "install LeaderWorkerSet (sigs.k8s.io/lws), or pin a layout that fits one node")


def workload_blocked(model: FoundationModel, sizing: Any, served: frozenset[str]) -> tuple[str, str] | None:
    """(reason, message) when a replica spanning nodes cannot run here, else None."""
    if not sizing.multi_node:
        return None
    missing = missing_workload_api(sizing, served)
    if missing:
        return "LeaderWorkerSetNotServed", missing
    cache = shared_cache_problem(model)
    if cache:
        return "CacheNotShareable", cache
    return None


def _now(context: OperatorContext) -> str:
    return rfc3339(context.clock())


async def reconcile(
    context: OperatorContext,
    ref: ModelRef,
    indexes: Mapping[str, Any],
    *,
    trigger: str = "",
) -> Outcome:
    """Reconcile one FoundationModel (the exact entry point every handler calls)."""

    async def work() -> Outcome:
        started = time.perf_counter()
        try:
            outcome = await _pass(context, ref, indexes, trigger)
        except Exception:
            context.metrics.record_reconcile(succeeded=False, seconds=time.perf_counter() - started)
            raise
        context.metrics.record_reconcile(succeeded=not outcome.errors, seconds=time.perf_counter() - started)
        return outcome

    result = await context.gate.run(ref, work)
    return result if result is not None else Outcome(skipped=True)


async def reconcile_for_queue(context: OperatorContext, ref: ModelRef, indexes: Mapping[str, Any], trigger: str) -> bool:
    """The WorkQueue's unit of work: one pass; True asks for a retry (an API write failed).
    A replica that is not the leader writes nothing (its queue is paused; this is the guard
    for a pass that was already taken when leadership went)."""
    if not context.leading:
        return False
    outcome = await reconcile(context, ref, indexes, trigger=trigger)
    return bool(outcome.errors)



async def _pass(
    context: OperatorContext,
    ref: ModelRef,
    indexes: Mapping[str, Any],
    trigger: str,
) -> Outcome:
    namespace, name = ref
    listed = context.listed.pop(ref, None)  # a resync's fresh view wins over kopf's cache
    if listed is not None:
        body, cached, pods = listed.body, listed.children, listed.pods
    else:
        cached_models = observe.from_index(indexes.get(observe.MODELS_INDEX), ref)
        body = cached_models[0] if cached_models else None
        cached = observe.observed_children(indexes, ref)
        pods = observe.from_index(indexes.get(observe.PODS_INDEX), (namespace, label_value(name)))
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return Outcome(skipped=True)  # gone or going: garbage collection removes the children
    generation = int(body["metadata"].get("generation") or 0)
    mine = context.applied.get(ref)
    if listed is not None and mine:  # the list was read after these writes: it knows better
        forget_writes_before(context, ref, listed.listed_at)
    children = observe.overlay_applied(cached, mine or {})
    for key in observe.settled(cached, mine or {}):
        del mine[key]  # type: ignore[union-attr]
    log.debug(kv("Pass", name=name, namespace=namespace, trigger=trigger, listed=listed is not None,
                 cached=sorted(f"{c.get('kind')}/{(c.get('metadata') or {}).get('name')}" for c in cached),
                 pending=sorted(str(k) for k in (mine or {}))))
    deployment = observe.find_workload(children)

    try:
        model = FoundationModel.from_object(body)
        profile = context.config.profile(model.spec.accelerator.profile)
    except (ValidationError, ConfigError) as exc:
        reason = "UnknownAcceleratorProfile" if isinstance(exc, ConfigError) else "InvalidSpec"
        sizing = Sizing(False, _first_error(exc), reason)
        world = World(generation, sizing, 0, deployment, pods, namespace=namespace)
        return await _finish(context, body, world, Outcome(), model=None)

    from kiban.sizing import resolve_sizing

    gpu = resolve_sizing(model.spec, profile, context.config.max_nodes_per_replica)
    replicas = model.spec.scaling.desired_replicas()
    if not gpu.fits:
        # nothing is created or deleted: the user fixes the spec, the running children stay
        world = World(
            generation, Sizing(False, gpu.message, str(gpu.reason)), replicas, deployment, pods,
            namespace=namespace,
        )
        return await _finish(context, body, world, Outcome(), model=model)

    served = await context.io(context.discovery.served_groups, priority=URGENT)  # cached: rarely a call
    blocked = workload_blocked(model, gpu, served)
    if blocked:  # as above: say why, change nothing
        reason, message = blocked
        world = World(generation, Sizing(False, message, reason), replicas, deployment, pods, namespace=namespace)
        return await _finish(context, body, world, Outcome(), model=model)
    desired = desired_for(context, ref, body, model, gpu, replicas, served)
    the_plan = plan(desired, children, body["metadata"]["uid"])
    result = ApplyResult()
    if not the_plan.empty:
        log.info(kv("Planned changes", name=name, namespace=namespace, trigger=trigger,
                    actions=[f"{a.verb} {a.kind}/{a.name}: {a.reason}" for a in the_plan.actions]))
        result = await execute(context, the_plan, namespace)
        _remember_writes(context, ref, result)
    wanted_deployment = next((c for c in desired if c["kind"] in observe.WORKLOAD_KINDS), None)
    kind = wanted_deployment["kind"] if wanted_deployment else "Deployment"
    seen_deployment = result.returned.get(f"{kind}/{wanted_deployment['metadata']['name']}") if wanted_deployment else None
    service = next((c for c in desired if c["kind"] == "Service"), None)
    world = World(
        generation=generation,
        sizing=Sizing(True),
        desired_replicas=replicas,
        deployment=seen_deployment or observe.find_workload(children, kind),
        pods=pods,
        service_name=service["metadata"]["name"] if service else None,
        namespace=namespace,
        selector=selector_string(wanted_deployment),
        wrote_children=bool(result.written),
        conflicts=the_plan.conflicts,
        apply_errors=result.errors,
        resolved=resolved_status(model, context.config, gpu),
        unserved=unserved_requests(model, served),
        gateway_url=(context.config.gateway_url
                     if model.spec.exposure.through_gateway(context.config.gateway_default) else None),
        workload_kind=kind,
        pods_per_replica=gpu.nodes_per_replica,
    )
    outcome = Outcome(plan=the_plan, errors=list(result.errors))
    for action in result.written:
        if action.kind in observe.WORKLOAD_KINDS and action.verb in ("create", "update"):
            verb = "Created" if action.verb == "create" else "Updated"
            context.post_event_later(body, "Normal", verb, f"{verb} {action.kind} {action.name}: {action.reason}")
    return await _finish(context, body, world, outcome, model=model, gpus=gpu.gpus_per_replica)


ROUTE_API = "route.openshift.io/v1"


def unserved_requests(model: FoundationModel, served: frozenset[str]) -> list[str]:
    """What the spec asks for that this cluster's APIs cannot give (said in Degraded, never
    silently dropped)."""
    if model.spec.exposure.route and ROUTE_API not in served:
        return [f"spec.exposure.route is true but {ROUTE_API} is not served by this cluster (it is "
                "OpenShift's): no Route was created; the model is reachable in the cluster at its Service"]
    return []


def write_stages(the_plan: Plan) -> list[Plan]:
    """The plan cut into stages run one after another; the actions of a stage run concurrently.

    The workload (Deployment or LeaderWorkerSet) goes first (it is what starts pods, and what a
    user waits for), then every other create and update at once, then the deletes (a replacement
    exists before the old object goes).
    """
    first = tuple(a for a in (*the_plan.creates, *the_plan.updates) if a.kind in observe.WORKLOAD_KINDS)
    rest = tuple(a for a in (*the_plan.creates, *the_plan.updates) if a.kind not in observe.WORKLOAD_KINDS)
    stages = [Plan(creates=first), Plan(creates=rest), Plan(deletes=the_plan.deletes)]
    return [stage for stage in stages if not stage.empty]


async def execute(context: OperatorContext, the_plan: Plan, namespace: str) -> ApplyResult:
    """Carry out a plan through the I/O pool: stage by stage, each stage's writes in parallel."""
    merged = ApplyResult()
    for stage in write_stages(the_plan):
        results = await asyncio.gather(*(
            context.io(context.writer.execute_one, action, namespace,
                       priority=URGENT if action.kind in observe.WORKLOAD_KINDS else NORMAL)
            for action in stage.actions
        ))
        for part in results:
            merged.written.extend(part.written)
            # what the pass reads of a returned object (the index's projection, no managedFields):
            # a pass waits on later stages and its status write with these in hand, and during a
            # storm of creates a thousand passes do at once
            merged.returned.update({key: observe.project_child(obj) for key, obj in part.returned.items()})
            merged.errors.extend(part.errors)
    return merged


def _remember_writes(context: OperatorContext, ref: ModelRef, result: ApplyResult) -> None:
    mine = context.applied.setdefault(ref, {})
    stamps = context.applied_at.setdefault(ref, {})
    now = time.monotonic()
    for action in result.written:
        key = child_key(action.obj)
        if action.verb == "delete":
            mine.pop(key, None)
            stamps.pop(key, None)
        elif (returned := result.returned.get(describe(action.obj))) is not None:
            mine[key] = observe.project_child(returned)
            stamps[key] = now


def forget_writes_before(context: OperatorContext, ref: ModelRef, moment: float) -> None:
    """Drop the remembered writes older than `moment` (monotonic): what was listed after them, or
    a watch event that says the child is gone, is the truth. Without this, a write the watch
    never echoed (an apply that changed nothing) could hide the child's later deletion."""
    mine, stamps = context.applied.get(ref) or {}, context.applied_at.get(ref) or {}
    for key in [k for k in mine if stamps.get(k, float("-inf")) < moment]:
        mine.pop(key, None)
        stamps.pop(key, None)


def forget_write(context: OperatorContext, ref: ModelRef, key: Any) -> None:
    """A child's DELETED event: whatever we wrote to it before is gone with it."""
    (context.applied.get(ref) or {}).pop(key, None)
    (context.applied_at.get(ref) or {}).pop(key, None)


def desired_for(
    context: OperatorContext,
    ref: ModelRef,
    body: Mapping[str, Any],
    model: FoundationModel,
    gpu: Any,
    replicas: int,
    served: frozenset[str],
) -> list[dict[str, Any]]:
    """The owned, spec-hashed desired children, rebuilt only when their inputs changed.

    The inputs: the model's uid, generation (spec, including the scale subresource), labels and
    annotations, and the served optional APIs; the config is fixed per operator. The builders
    and hashing are most of a pass's CPU, and most passes (child and pod events) change none.
    """
    metadata = body["metadata"]
    key = (
        metadata.get("uid"), metadata.get("generation"), replicas, served,
        repr(metadata.get("labels")), repr(metadata.get("annotations")),
    )
    cached = context.desired_cache.get(ref)
    if cached is not None and cached[0] == key:
        return cached[1]
    desired = build_desired(model, context.config, gpu, replicas=replicas, served_groups=served)
    context.desired_cache[ref] = (key, desired)
    return desired


def build_desired(
    model: FoundationModel,
    config: OperatorConfig,
    gpu: Any,
    *,
    replicas: int,
    served_groups: frozenset[str],
) -> list[dict[str, Any]]:
    """The desired children from the pure builders (see kiban.builders.build_children)."""
    from kiban.builders import build_children

    return build_children(model, config, sizing=gpu, replicas=replicas, available_apis=served_groups)


async def _finish(
    context: OperatorContext,
    body: Mapping[str, Any],
    world: World,
    outcome: Outcome,
    *,
    model: FoundationModel | None,
    gpus: int | None = None,
) -> Outcome:
    """Write status when it changed, post Events for transitions, refresh per-model gauges."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    current = body.get("status") or {}
    previous_conditions = own_conditions(current.get("conditions"))
    status = build_status(world, previous_conditions, _now(context))
    outcome.status = status
    if status_changed(current, status):
        try:
            await context.io(context.writer.apply_status, namespace, name, status, context.writer.field_manager)
        except ApiException as exc:
            outcome.errors.append(f"status: {api_error_message(exc)}")
            log.warning(kv("Failed to apply status", name=name, namespace=namespace, error=api_error_message(exc)))
            return outcome
        log.info(kv("Updated status", name=name, namespace=namespace,
                    conditions={c["type"]: c["status"] for c in status["conditions"]}))
    for cond in changed_conditions(previous_conditions, status["conditions"]):
        event_type = EVENT_WORTHY.get((cond["type"], cond["status"]))
        if event_type:
            context.post_event_later(body, event_type, cond["reason"], cond["message"] or cond["reason"])
    if model is not None:
        _refresh_gauges(context.metrics, model, world, status, gpus)
    return outcome


def _refresh_gauges(
    metrics: OperatorMetrics, model: FoundationModel, world: World, status: Mapping[str, Any], gpus: int | None
) -> None:
    key = ModelKey(model.namespace or "", model.name, model.served_model_name)
    metrics.set_model_gauge("current_replicas", key, status.get("replicas", 0))
    metrics.set_model_gauge("ready_replicas", key, status.get("readyReplicas", 0))
    if gpus is not None:
        metrics.set_model_gauge("gpus_per_replica", key, gpus)
    slo = model.spec.scaling.slo
    if slo is not None:
        for percentile, value in (("p95", slo.ttft_p95_ms), ("p99", slo.ttft_p99_ms)):
            if value is not None:
                metrics.set_model_gauge("slo_ttft_seconds", key, value / 1000.0, percentile=percentile)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)
