"""Thin kopf handlers: every path ends in kiban.reconcile.run.reconcile(), through one work queue.

Handlers are registered into a registry passed in (`register(registry, ...)`), never into
kopf's module-level default, so each operator instance (and each test) has its own.

Structure
- indexes (kopf's informer cache, no API calls per pass):
  kiban_models (FoundationModels), kiban_children_<plural> (children with
  app.kubernetes.io/managed-by=kiban, keyed by owning FoundationModel), kiban_pods.
- on.event (FoundationModel): put the model on the operator-wide WorkQueue
  (kiban.reconcile.queue), whose workers run the passes. Only watch events are used, no
  on.create/update/resume: those make kopf write a progress and a diff-base annotation on
  every model (an extra patch and watch event each), and a failed pass is retried by the
  queue instead. A MODIFIED event that changed neither generation, labels nor annotations
  (our own status patch, the autoscaler's) is not queued.
- resync: kopf re-lists every watched resource each time its watch is reopened, which is
  every `resync_seconds` (settings.watching.server_timeout, see kiban.operator_cli), and
  delivers each listed object as an event of type None; those queue every model, the
  level-based safety net. It needs no per-model timer (a timer makes kopf put a finalizer on
  every model: one more write each, and deletion waits for a running operator), and a
  replica paused by peering neither lists nor watches, so it never resyncs behind the leader.
- on.event (each child kind and pods with our label): queue the owner, so a hand edit is put
  back and status follows pods (scheduled, ready) within a second. The re-list of children
  queues nothing: the models' own re-list covers them.
- on.event (FoundationModel DELETED): drop its metrics; children go by garbage collection.
- on.event (FoundationModel MODIFIED or re-listed) with requests the Kiban gateway holds at zero
  replicas (status.gateway.held): an autoscale pass at once (Autoscaler.notice), the wake from zero.
- timer `autoscale`: one pass of the operator's Autoscaler (OperatorContext.autoscaler,
  kiban.autoscale.model_pass) for the model, every
  config.autoscale_interval_seconds, for the models it has work for (autoscaling on, or
  autoscaler status left to clear: see `autoscale_wanted`); peering keeps it (and everything
  else) on one replica.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kiban.api.v1alpha1 import GROUP, PLURAL, VERSION
from kiban.reconcile import observe
from kiban.reconcile.logfmt import kv
from kiban.reconcile.queue import WorkQueue
from kiban.reconcile.run import OperatorContext, reconcile_for_queue

log = logging.getLogger("kiban.handlers")

FM = (GROUP, VERSION, PLURAL)
RETRY_DELAY_SECONDS = 5.0
RECONCILE_WORKERS = 10_000  # passes in flight: the I/O pool, not this, bounds the API calls
AUTOSCALER_CONDITIONS = frozenset({"MetricsAvailable", "ScalingLimited"})


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The kopf indexes a handler received, by id."""
    wanted = {observe.MODELS_INDEX, observe.PODS_INDEX, *(c.index_id for c in observe.CHILD_RESOURCES)}
    return {key: value for key, value in kwargs.items() if key in wanted}


def _context(memo: Any) -> OperatorContext:
    return memo.context


def _queue(memo: Any, workers: int) -> WorkQueue:
    """The operator instance's reconcile queue, made on first use (on kopf's event loop)."""
    context = _context(memo)
    if context.queue is None:
        context.queue = WorkQueue(
            lambda ref, indexes, trigger: reconcile_for_queue(context, ref, indexes, trigger),
            workers=workers, retry_seconds=RETRY_DELAY_SECONDS,
        )
    return context.queue


def fingerprint(body: Mapping[str, Any]) -> tuple:
    """What a reconcile pass reads from a model besides its spec: a change to anything else
    (status, managedFields, resourceVersion) needs no pass."""
    metadata = body.get("metadata") or {}
    return (
        metadata.get("generation"),
        tuple(sorted((metadata.get("labels") or {}).items())),
        tuple(sorted((metadata.get("annotations") or {}).items())),
        metadata.get("deletionTimestamp"),
    )


def autoscale_wanted(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether the autoscale timer has anything to do for a model: autoscaling is on (the
    default), or it is off but status.scaling / the autoscaler's conditions are left to clear.
    Models that match nothing get no timer, hence no kopf finalizer."""
    if (spec.get("scaling") or {}).get("autoscaling", True):
        return True
    if (status or {}).get("scaling") is not None:
        return True
    return any(c.get("type") in AUTOSCALER_CONDITIONS for c in (status or {}).get("conditions") or ())


def register(
    registry: kopf.OperatorRegistry,
    *,
    autoscale_interval_seconds: float | None = None,
    workers: int = RECONCILE_WORKERS,
) -> kopf.OperatorRegistry:
    """Register every handler of the operator into `registry` and return it (the resync period
    is a watch setting: kiban.operator_cli.operator_settings)."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """Same credentials as the kubernetes client: in-cluster, else KUBECONFIG."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def stop_queue(memo: Any, **_: Any) -> None:
        queue = _context(memo).queue
        if queue is not None:
            await queue.stop()

    # ---- indexes: the cache a pass reads instead of listing (async: no thread hop per event)
    @kopf.index(*FM, id=observe.MODELS_INDEX, registry=registry)
    async def index_models(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict:
        return {(namespace, name): observe.project_model(body)}

    async def index_child(body: kopf.Body, **_: Any) -> dict | None:
        ref = observe.owner_model(body)
        return {ref: observe.project_child(body)} if ref else None

    for resource in observe.CHILD_RESOURCES:
        kopf.index(
            resource.group, resource.version, resource.plural,
            id=resource.index_id, labels=observe.MANAGED_LABELS, registry=registry,
        )(index_child)

    @kopf.index("", "v1", "pods", id=observe.PODS_INDEX, labels=observe.MANAGED_LABELS, registry=registry)
    async def index_pods(body: kopf.Body, **_: Any) -> dict | None:
        ref = observe.owner_model(body)
        return {ref: observe.project_pod(body)} if ref else None

    # ---- the FoundationModel itself
    queued_as: dict[tuple[str, str], tuple] = {}  # what each model looked like when last queued

    @kopf.on.event(*FM, registry=registry)
    async def model_event(type: str | None, namespace: str, name: str, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
        ref = (namespace, name)
        if type == "DELETED":
            queued_as.pop(ref, None)
            context = _context(memo)
            context.metrics.forget_model(namespace, name)
            context.forget(ref)
            log.info(kv("Forgot deleted FoundationModel", name=name, namespace=namespace))
            return
        autoscaler = _context(memo).autoscaler
        if autoscaler is not None and type in ("MODIFIED", None):
            autoscaler.notice(_context(memo), body, _indexes(kwargs))  # the gateway holds requests: wake now
        seen = fingerprint(body)
        if type == "MODIFIED" and queued_as.get(ref) == seen:
            return  # status or bookkeeping only: nothing a pass reads has changed
        queued_as[ref] = seen
        _queue(memo, workers).add(ref, _indexes(kwargs), "resync" if type is None else str(type).lower())

    # ---- children and pods: a change queues the owner
    async def owner_event(body: kopf.Body, memo: Any, type: str | None = None, **kwargs: Any) -> None:
        if type is None:
            return  # a re-list: the models' own re-list resyncs every owner
        ref = observe.owner_model(body)
        if ref is None or not ref[1]:
            return
        indexes = _indexes(kwargs)
        if not observe.from_index(indexes.get(observe.MODELS_INDEX), ref):
            return  # the owner is gone or not ours to watch
        _queue(memo, workers).add(ref, indexes, f"{body.get('kind', 'child')} {type}")

    for resource in (*observe.CHILD_RESOURCES, observe.ChildResource("", "v1", "pods")):
        kopf.on.event(
            resource.group, resource.version, resource.plural,
            id=f"reconcile_owner_of_{resource.plural}", labels=observe.MANAGED_LABELS, registry=registry,
        )(owner_event)

    # ---- the autoscaler's hook
    if autoscale_interval_seconds:

        def wanted(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
            return autoscale_wanted(spec, status)

        @kopf.timer(*FM, interval=autoscale_interval_seconds, when=wanted, registry=registry)
        async def autoscale(body: kopf.Body, memo: Any, **kwargs: Any) -> None:
            context = _context(memo)
            if context.autoscaler is not None:
                await context.autoscaler.run_once(context, body, _indexes(kwargs))

    return registry
