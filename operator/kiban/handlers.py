"""Thin kopf handlers: every path ends in kiban.reconcile.run.reconcile().

Handlers are registered into a registry passed in (`register(registry, ...)`), never into
kopf's module-level default, so each operator instance (and each test) has its own.

Structure
- indexes (kopf's informer cache, no API calls per pass):
  kiban_models (FoundationModels), kiban_children_<plural> (children with
  app.kubernetes.io/managed-by=kiban, keyed by owning FoundationModel), kiban_pods.
- on.create / on.update / on.resume (FoundationModel): reconcile; API errors retry via kopf.
- timer (FoundationModel, every `resync_seconds`): reconcile, the level-based safety net.
- on.event (each child kind and pods with our label): reconcile the owner, so a hand edit is
  put back and status follows pods (scheduled, ready) within a second.
- on.event (FoundationModel DELETED): drop its metrics; children go by garbage collection.
- timer `autoscale` (only when kiban.autoscale.loop provides `tick`): the autoscaler hook,
  `await tick(body=..., context=OperatorContext, indexes=...)`, every
  config.autoscale_interval_seconds; peering keeps it (and everything else) on one replica.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kiban.api.v1alpha1 import GROUP, PLURAL, VERSION
from kiban.reconcile import observe
from kiban.reconcile.logfmt import kv
from kiban.reconcile.run import OperatorContext, reconcile

log = logging.getLogger("kiban.handlers")

FM = (GROUP, VERSION, PLURAL)
RETRY_DELAY_SECONDS = 5.0


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The kopf indexes a handler received, by id."""
    wanted = {observe.MODELS_INDEX, observe.PODS_INDEX, *(c.index_id for c in observe.CHILD_RESOURCES)}
    return {key: value for key, value in kwargs.items() if key in wanted}


def _context(memo: Any) -> OperatorContext:
    return memo.context


def autoscale_tick():
    """kiban.autoscale.loop.tick when that module exists (written by the autoscaler's author)."""
    try:
        module = importlib.import_module("kiban.autoscale.loop")
    except ModuleNotFoundError as exc:
        if exc.name == "kiban.autoscale.loop":
            return None
        raise
    return getattr(module, "tick", None)


def register(
    registry: kopf.OperatorRegistry,
    *,
    resync_seconds: float = 60.0,
    autoscale_interval_seconds: float | None = None,
) -> kopf.OperatorRegistry:
    """Register every handler of the operator into `registry` and return it."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """Same credentials as the kubernetes client: in-cluster, else KUBECONFIG."""
        return kopf.login_via_client(**kwargs)

    # ---- indexes: the cache a pass reads instead of listing
    @kopf.index(*FM, id=observe.MODELS_INDEX, registry=registry)
    def index_models(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict:
        return {(namespace, name): observe._plain(body)}

    def index_child(body: kopf.Body, **_: Any) -> dict | None:
        ref = observe.owner_model(body)
        return {ref: observe.project_child(body)} if ref else None

    for resource in observe.CHILD_RESOURCES:
        kopf.index(
            resource.group, resource.version, resource.plural,
            id=resource.index_id, labels=observe.MANAGED_LABELS, registry=registry,
        )(index_child)

    @kopf.index("", "v1", "pods", id=observe.PODS_INDEX, labels=observe.MANAGED_LABELS, registry=registry)
    def index_pods(body: kopf.Body, **_: Any) -> dict | None:
        ref = observe.owner_model(body)
        return {ref: observe.project_pod(body)} if ref else None

    # ---- the FoundationModel itself
    @kopf.on.create(*FM, registry=registry)
    @kopf.on.update(*FM, registry=registry)
    @kopf.on.resume(*FM, registry=registry)
    async def reconcile_on_change(namespace: str, name: str, body: kopf.Body, memo: Any, reason: Any, **kwargs: Any) -> None:
        outcome = await reconcile(
            _context(memo), (namespace, name), _indexes(kwargs), fallback_body=body, trigger=str(reason)
        )
        if outcome.errors:
            raise kopf.TemporaryError("; ".join(outcome.errors), delay=RETRY_DELAY_SECONDS)

    @kopf.timer(*FM, interval=resync_seconds, initial_delay=resync_seconds, registry=registry)
    async def resync(namespace: str, name: str, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
        await reconcile(_context(memo), (namespace, name), _indexes(kwargs), fallback_body=body, trigger="resync")

    @kopf.on.event(*FM, registry=registry)
    def forget_deleted(type: str, namespace: str, name: str, memo: Any, **_: Any) -> None:
        if type == "DELETED":
            context = _context(memo)
            context.metrics.forget_model(namespace, name)
            context.forget((namespace, name))
            log.info(kv("Forgot deleted FoundationModel", name=name, namespace=namespace))

    # ---- children and pods: a change reconciles the owner
    async def reconcile_owner(body: kopf.Body, memo: Any, type: str | None = None, **kwargs: Any) -> None:
        ref = observe.owner_model(body)
        if ref is None or not ref[1]:
            return
        indexes = _indexes(kwargs)
        if not observe.from_index(indexes.get(observe.MODELS_INDEX), ref):
            return  # the owner is gone or not ours to watch
        kind = body.get("kind", "child")
        await reconcile(_context(memo), ref, indexes, trigger=f"{kind} {type or 'event'}")

    for resource in (*observe.CHILD_RESOURCES, observe.ChildResource("", "v1", "pods")):
        kopf.on.event(
            resource.group, resource.version, resource.plural,
            id=f"reconcile_owner_of_{resource.plural}", labels=observe.MANAGED_LABELS, registry=registry,
        )(reconcile_owner)

    # ---- the autoscaler's hook
    tick = autoscale_tick()
    if tick is not None and autoscale_interval_seconds:

        @kopf.timer(*FM, interval=autoscale_interval_seconds, registry=registry)
        async def autoscale(body: kopf.Body, memo: Any, **kwargs: Any) -> None:
            result = tick(body=body, context=_context(memo), indexes=_indexes(kwargs))
            if inspect.isawaitable(result):
                await result

    return registry
