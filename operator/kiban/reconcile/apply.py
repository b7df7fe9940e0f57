"""The one module that writes to the Kubernetes API.

Children are written with server-side apply under one field manager ("kiban") and
force=True: the fields we set are ours, and a hand edit to one of them is taken back. Fields
we never set (the Deployment controller's, a user's extra annotation) stay with whoever set
them. Status is written the same way, on the /status subresource, one field manager per
writer (reconciler `kiban`, autoscaler `kiban-autoscaler`, drift `kiban-drift`), each applying
only its own fields and conditions (a list-map keyed by type), so no writer can revert
another's. Every function here is synchronous (the `kubernetes` client is); run.py calls them
from a worker thread so the operator's event loop never blocks on the network.

Events are aggregated as client-go's recorder does: the same (object, type, reason, message)
again within EVENT_SERIES_WINDOW_S bumps the existing Event's count and lastTimestamp instead
of creating a new object. The leader Lease (coordination.k8s.io/v1) is read and written here
too (kiban.reconcile.leader decides what to write).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError, ResourceNotUniqueError
from urllib3.exceptions import HTTPError

from kiban.api import v1alpha1
from kiban.clock import rfc3339
from kiban.reconcile.logfmt import kv
from kiban.reconcile.plan import Action, describe

FIELD_MANAGER = "kiban"
REPORTING_COMPONENT = "kiban-operator"
EVENT_SERIES_WINDOW_S = 600.0  # client-go's correlator: a repeat within 10 minutes is the same Event
EVENT_CACHE_SIZE = 4096  # distinct Events remembered for aggregation
LEASE_TIMEOUT_S = 3.0  # one Lease call: well inside the renew deadline
LEGACY_FINALIZER = "kiban.dev/finalizer"  # kopf's, from the per-model autoscale timer (gone)
LEGACY_ANNOTATION_PREFIXES = ("kiban.dev/last-handled-configuration", "kiban.dev/autoscale")

log = logging.getLogger("kiban.apply")


def _as_dict(_client: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Keep responses as plain JSON dicts: ResourceInstance wrapping costs CPU we do not need."""
    return data


def api_error_message(exc: ApiException) -> str:
    """The API server's own words for a refusal: `422 Unprocessable Entity: <its message>`.

    The Status object in the body names the field and the rule; the bare status line does not."""
    head = f"{exc.status} {exc.reason}".strip()
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    if not message and isinstance(exc.body, str) and exc.body and not exc.body.lstrip().startswith("{"):
        message = exc.body.strip()
    return f"{head}: {message}"[:1000] if message else head


def legacy_cleanup_patch(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """A JSON patch removing what the operator no longer uses from a FoundationModel: kopf's
    finalizer (deleting a model, or its namespace, must never wait for a running operator) and
    kopf's bookkeeping annotations. Guarded by `test` ops, so a concurrent change fails it
    instead of removing the wrong element. None when there is nothing to remove."""
    metadata = body.get("metadata") or {}
    ops: list[dict[str, Any]] = []
    finalizers = list(metadata.get("finalizers") or ())
    for index in reversed([i for i, f in enumerate(finalizers) if f == LEGACY_FINALIZER]):
        ops += [{"op": "test", "path": f"/metadata/finalizers/{index}", "value": LEGACY_FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"}]
    for key in sorted(metadata.get("annotations") or {}):
        if key.startswith(LEGACY_ANNOTATION_PREFIXES):
            ops.append({"op": "remove", "path": "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")})
    return ops or None


@dataclass
class _Seen:
    name: str
    namespace: str
    count: int
    first: str
    last_s: float


class EventAggregator:
    """Which Events were posted recently, so a repeat becomes count+1 on the same object (pure
    but for the clock; an LRU of EVENT_CACHE_SIZE keys)."""

    def __init__(self, window_s: float = EVENT_SERIES_WINDOW_S, size: int = EVENT_CACHE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.size, self.clock = window_s, size, clock
        self._seen: OrderedDict[tuple, _Seen] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(fm: Mapping[str, Any], event_type: str, reason: str, message: str) -> tuple:
        metadata = fm["metadata"]
        return (metadata["namespace"], metadata["name"], metadata.get("uid"), event_type, reason, message)

    def repeat_of(self, key: tuple) -> _Seen | None:
        """The recent Event this one repeats, or None (then post a new one)."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or self.clock() - seen.last_s > self.window_s:
                return None
            self._seen.move_to_end(key)
            return seen

    def remember(self, key: tuple, seen: _Seen) -> None:
        with self._lock:
            seen.last_s = self.clock()
            self._seen[key] = seen
            self._seen.move_to_end(key)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)

    def forget(self, key: tuple) -> None:
        with self._lock:
            self._seen.pop(key, None)


@dataclass
class ApplyResult:
    """What one plan's execution did: the objects the server returned, and what failed."""

    written: list[Action] = field(default_factory=list)
    returned: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Kind/name" -> server copy
    errors: list[str] = field(default_factory=list)


class Writer:
    """Writes through one ApiClient; resource discovery is cached by the dynamic client."""

    def __init__(self, api: ApiClient, field_manager: str = FIELD_MANAGER, *,
                 instance: str = REPORTING_COMPONENT, on_write: Callable[[str], None] | None = None) -> None:
        self.api = api
        self.field_manager = field_manager
        self.instance = instance  # Events' reportingInstance: which operator replica wrote
        self.on_write = on_write or (lambda manager: None)  # counts writes per field manager
        self.events = EventAggregator()
        self._dynamic: DynamicClient | None = None
        self._lock = threading.Lock()

    @property
    def dynamic(self) -> DynamicClient:
        with self._lock:
            if self._dynamic is None:
                self._dynamic = DynamicClient(self.api)
            return self._dynamic

    def _resource(self, api_version: str, kind: str):
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def apply(self, obj: Mapping[str, Any], namespace: str) -> dict[str, Any]:
        """Server-side apply `obj` as field manager kiban, taking over conflicting fields we set."""
        resource = self._resource(obj["apiVersion"], obj["kind"])
        self.on_write(self.field_manager)
        return self.dynamic.server_side_apply(
            resource,
            body=dict(obj),
            namespace=namespace,
            field_manager=self.field_manager,
            force_conflicts=True,
            serializer=_as_dict,
        )

    def held_by_someone_else(self, obj: Mapping[str, Any], namespace: str) -> bool:
        """Whether an object of this name exists that `obj`'s owner does not own.

        The plan only sees children carrying our labels, so an unlabelled user object with a
        child's name looks absent; a forced apply would take it over (and garbage collection
        would later delete it with the model). Read it first and refuse instead.
        """
        resource = self._resource(obj["apiVersion"], obj["kind"])
        try:
            current = self.dynamic.get(resource, name=obj["metadata"]["name"], namespace=namespace,
                                       serializer=_as_dict)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        ours = {ref.get("uid") for ref in obj.get("metadata", {}).get("ownerReferences") or ()}
        theirs = {ref.get("uid") for ref in (current.get("metadata") or {}).get("ownerReferences") or ()}
        return not ours & theirs

    def delete(self, obj: Mapping[str, Any], namespace: str) -> None:
        """Delete one child; already gone counts as done. Preconditioned on its uid."""
        resource = self._resource(obj["apiVersion"], obj["kind"])
        uid = obj.get("metadata", {}).get("uid")
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        self.on_write(self.field_manager)
        try:
            self.dynamic.delete(
                resource, name=obj["metadata"]["name"], namespace=namespace, body=body, serializer=_as_dict
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def execute_one(self, action: Action, namespace: str, result: ApplyResult | None = None) -> ApplyResult:
        """One action (the unit run.py runs in parallel); an API error is recorded, not raised."""
        result = result if result is not None else ApplyResult()
        try:
            if action.verb == "delete":
                self.delete(action.obj, namespace)
            elif action.verb == "create" and self.held_by_someone_else(action.obj, namespace):
                message = (f"create {describe(action.obj)} refused: an object of that name exists "
                           "that this FoundationModel does not own; rename or remove it")
                log.warning(kv(f"Refused to take over {action.kind}", name=action.name, namespace=namespace))
                result.errors.append(message)
                return result
            else:
                result.returned[describe(action.obj)] = self.apply(action.obj, namespace)
        except ApiException as exc:
            message = f"{action.verb} {describe(action.obj)} failed: {api_error_message(exc)}"
            log.warning(kv(f"Failed to {action.verb} {action.kind}", name=action.name,
                           namespace=namespace, status=exc.status, error=api_error_message(exc)))
            result.errors.append(message)
            return result
        except (ResourceNotFoundError, ResourceNotUniqueError, HTTPError, OSError) as exc:
            # a kind the server does not serve, or no connection: this child's failure, not the pass's
            message = f"{action.verb} {describe(action.obj)} failed: {type(exc).__name__}: {exc}"
            log.warning(kv(f"Failed to {action.verb} {action.kind}", name=action.name,
                           namespace=namespace, error=f"{type(exc).__name__}: {exc}"))
            result.errors.append(message[:500])
            return result
        result.written.append(action)
        log.info(kv(f"{_past_tense(action.verb)} {action.kind}", name=action.name,
                    namespace=namespace, reason=action.reason))
        return result

    def apply_status(self, namespace: str, name: str, status: Mapping[str, Any], manager: str | None = None) -> dict:
        """Server-side apply of one writer's part of a FoundationModel's status (its fields and
        conditions, nothing else) as `manager`; fields it applied before and leaves out now go."""
        resource = self._resource(v1alpha1.API_VERSION, v1alpha1.KIND)
        manager = manager or self.field_manager
        body = {"apiVersion": v1alpha1.API_VERSION, "kind": v1alpha1.KIND,
                "metadata": {"name": name, "namespace": namespace}, "status": dict(status)}
        self.on_write(manager)
        return self.dynamic.server_side_apply(
            resource.subresources["status"], body=body, name=name, namespace=namespace,
            field_manager=manager, force_conflicts=True, serializer=_as_dict,
        )

    def remove_legacy(self, namespace: str, name: str, patch: list[dict[str, Any]]) -> None:
        """Apply a legacy_cleanup_patch (a JSON patch) to a FoundationModel; a conflict or a model
        already gone is left for the next resync."""
        resource = self._resource(v1alpha1.API_VERSION, v1alpha1.KIND)
        self.on_write(self.field_manager)
        try:
            self.dynamic.patch(resource, body=patch, name=name, namespace=namespace,
                               content_type="application/json-patch+json", field_manager=self.field_manager,
                               serializer=_as_dict)
        except ApiException as exc:
            if exc.status not in (404, 409, 422):
                raise
            log.info(kv("Left legacy cleanup for the next resync", name=name, namespace=namespace,
                        status=exc.status))

    def scale_foundation_model(self, namespace: str, name: str, replicas: int, manager: str) -> None:
        """Write a FoundationModel's scale subresource (spec.scaling.replicas), e.g. for the autoscaler."""
        resource = self._resource(v1alpha1.API_VERSION, v1alpha1.KIND)
        self.on_write(manager)
        self.dynamic.patch(
            resource.subresources["scale"],
            body={"spec": {"replicas": int(replicas)}},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
            field_manager=manager,
            serializer=_as_dict,
        )

    def post_event(
        self, fm: Mapping[str, Any], event_type: str, reason: str, message: str, now: datetime | None = None
    ) -> None:
        """A core/v1 Event on the FoundationModel, for `kubectl describe fm` readers; a repeat of
        a recent one (same type, reason and message) is counted on that Event instead."""
        metadata = fm["metadata"]
        stamp = rfc3339(now)
        message = message[:1024]
        key = self.events.key(fm, event_type, reason, message)
        seen = self.events.repeat_of(key)
        resource = self._resource("v1", "Event")
        try:
            if seen is not None:
                seen.count += 1
                self.on_write(self.field_manager)
                try:
                    self.dynamic.patch(resource, body={"count": seen.count, "lastTimestamp": stamp,
                                                       "series": {"count": seen.count, "lastObservedTime": _micro(now)}},
                                       name=seen.name, namespace=seen.namespace,
                                       content_type="application/merge-patch+json", serializer=_as_dict)
                    self.events.remember(key, seen)
                    return
                except ApiException as exc:
                    if exc.status != 404:  # gone (Events expire): post a new one below
                        raise
                    self.events.forget(key)
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": f"{metadata['name']}.{uuid.uuid4().hex[:12]}",
                    "namespace": metadata["namespace"],
                },
                "involvedObject": {
                    "apiVersion": v1alpha1.API_VERSION,
                    "kind": v1alpha1.KIND,
                    "name": metadata["name"],
                    "namespace": metadata["namespace"],
                    "uid": metadata.get("uid"),
                    "resourceVersion": metadata.get("resourceVersion"),
                },
                "type": event_type,
                "reason": reason,
                "message": message,
                "source": {"component": REPORTING_COMPONENT},
                "reportingComponent": REPORTING_COMPONENT,
                "reportingInstance": self.instance,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            }
            self.on_write(self.field_manager)
            self.dynamic.create(resource, body=event, namespace=metadata["namespace"], serializer=_as_dict)
            self.events.remember(key, _Seen(event["metadata"]["name"], metadata["namespace"], 1, stamp, 0.0))
        except ApiException as exc:  # an Event is best effort: never fail a reconcile over one
            log.warning(kv("Failed to post Event", reason=reason, name=metadata["name"],
                           namespace=metadata["namespace"], status=exc.status))

    # -- the leader Lease (coordination.k8s.io/v1) --------------------------------------------

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease, or None when it does not exist."""
        try:
            return self.dynamic.get(self._resource("coordination.k8s.io/v1", "Lease"), name=name,
                                    namespace=namespace, serializer=_as_dict, _request_timeout=LEASE_TIMEOUT_S)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}
        return self.dynamic.create(self._resource("coordination.k8s.io/v1", "Lease"), body=body,
                                   namespace=namespace, serializer=_as_dict, _request_timeout=LEASE_TIMEOUT_S)

    def replace_lease(self, namespace: str, name: str, resource_version: str,
                      spec: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the Lease's spec, guarded by resourceVersion: of two replicas racing for it,
        the API server lets exactly one win (409 for the other)."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": resource_version},
                "spec": dict(spec)}
        return self.dynamic.replace(self._resource("coordination.k8s.io/v1", "Lease"), body=body, name=name,
                                    namespace=namespace, serializer=_as_dict, _request_timeout=LEASE_TIMEOUT_S)


def _micro(now: datetime | None) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    from datetime import UTC

    moment = now or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _past_tense(verb: str) -> str:
    return {"create": "Created", "update": "Updated", "delete": "Deleted"}[verb]
