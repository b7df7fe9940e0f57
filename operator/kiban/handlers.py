"""Thin kopf handlers: every path ends in kiban.reconcile.run.reconcile(), through one work queue.

Handlers are registered into a registry passed in (`register(registry, ...)`), never into
kopf's module-level default, so each operator instance (and each test) has its own.

Structure
- indexes (kopf's informer cache, no API calls per pass):
  kiban_models (FoundationModels), kiban_children_<plural> (children with
  app.kubernetes.io/managed-by=kiban, keyed by owning FoundationModel), kiban_pods.
- on.startup: make the work queue (paused until this replica leads) and hand the live indexes
  to `on_startup` (kiban.tasks: leader election, and on the leader the resync, the autoscaler
  and the queue). on.cleanup: `on_cleanup`, then the queue stops.
- on.event (FoundationModel): put the model on the operator-wide WorkQueue
  (kiban.reconcile.queue), whose workers run the passes. Only watch events are used, no
  on.create/update/resume and no timer: those make kopf write a progress and a diff-base
  annotation, and a timer a finalizer, on every model (an extra write each, and a deletion
  that waits for a running operator). A failed pass is retried by the queue instead. A
  MODIFIED event that changed neither generation, labels nor annotations (our own status
  apply, the autoscaler's) is not queued.
- the resync is not kopf's: kopf lists once, then only watches. kiban.reconcile.resync
  re-lists everything every `resync_seconds` on the leader; kopf's own initial list (events of
  type None) queues every model once at start.
- on.event (each child kind and pods with our label): queue the owner, so a hand edit is put
  back and status follows pods (scheduled, ready) within a second.
- on.event (FoundationModel DELETED): drop its metrics, its queue state and the autoscaler's
  memory of it (by UID); children go by garbage collection.
- on.event (FoundationModel MODIFIED or re-listed) with requests the Kiban gateway holds at zero
  replicas (status.gateway.held): the leader's autoscaler task runs a pass for it at once
  (Autoscaler.notice), the wake from zero.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from kiban.api.v1alpha1 import GROUP, PLURAL, VERSION
from kiban.reconcile import observe
from kiban.reconcile.logfmt import kv
from kiban.reconcile.queue import WorkQueue
from kiban.reconcile.plan import child_key
from kiban.reconcile.run import OperatorContext, forget_write, reconcile_for_queue

log = logging.getLogger("kiban.handlers")

FM = (GROUP, VERSION, PLURAL)
RECONCILE_WORKERS = 10_000  # passes in flight: the I/O pool, not this, bounds the API calls


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
            workers=workers, paused=not context.leading,
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


def register(
    registry: kopf.OperatorRegistry,
    *,
    workers: int = RECONCILE_WORKERS,
    on_startup: Callable[[OperatorContext], Awaitable[None]] | None = None,
    on_cleanup: Callable[[OperatorContext], Awaitable[None]] | None = None,
) -> kopf.OperatorRegistry:
    """Register every handler of the operator into `registry` and return it."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """Same credentials as the kubernetes client: in-cluster, else KUBECONFIG."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def start_tasks(memo: Any, **kwargs: Any) -> None:
        context = _context(memo)
        context.indexes = _indexes(kwargs)  # kopf's live index objects, filled by its watches
        _queue(memo, workers)
        if on_startup is not None:
            await on_startup(context)

    @kopf.on.cleanup(registry=registry)
    async def stop_queue(memo: Any, **_: Any) -> None:
        context = _context(memo)
        if on_cleanup is not None:
            await on_cleanup(context)
        if context.queue is not None:
            await context.queue.stop()

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
            if context.autoscaler is not None:
                context.autoscaler.forget(str((body.get("metadata") or {}).get("uid") or ""))
            log.info(kv("Forgot deleted FoundationModel", name=name, namespace=namespace))
            return
        autoscaler = _context(memo).autoscaler
        if autoscaler is not None and type in ("MODIFIED", None):
            autoscaler.notice(_context(memo), body)  # the gateway holds requests: the leader wakes it now
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
        if type == "DELETED" and body.get("kind") != "Pod":
            forget_write(_context(memo), ref, child_key(body))
        _queue(memo, workers).add(ref, indexes, f"{body.get('kind', 'child')} {type}")

    for resource in (*observe.CHILD_RESOURCES, observe.ChildResource("", "v1", "pods")):
        kopf.on.event(
            resource.group, resource.version, resource.plural,
            id=f"reconcile_owner_of_{resource.plural}", labels=observe.MANAGED_LABELS, registry=registry,
        )(owner_event)

    return registry
