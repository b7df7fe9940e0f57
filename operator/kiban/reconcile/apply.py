"""The one module that writes to the Kubernetes API.

Children are written with server-side apply under one field manager ("kiban") and
force=True: the fields we set are ours, and a hand edit to one of them is taken back. Fields
we never set (the Deployment controller's, a user's extra annotation) stay with whoever set
them. Every function here is synchronous (the `kubernetes` client is); run.py calls them from
a worker thread so the operator's event loop never blocks on the network.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
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

log = logging.getLogger("kiban.apply")


def _as_dict(_client: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Keep responses as plain JSON dicts: ResourceInstance wrapping costs CPU we do not need."""
    return data


@dataclass
class ApplyResult:
    """What one plan's execution did: the objects the server returned, and what failed."""

    written: list[Action] = field(default_factory=list)
    returned: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Kind/name" -> server copy
    errors: list[str] = field(default_factory=list)


class Writer:
    """Writes through one ApiClient; resource discovery is cached by the dynamic client."""

    def __init__(self, api: ApiClient, field_manager: str = FIELD_MANAGER) -> None:
        self.api = api
        self.field_manager = field_manager
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
            message = f"{action.verb} {describe(action.obj)} failed: {exc.status} {exc.reason}"
            log.warning(kv(f"Failed to {action.verb} {action.kind}", name=action.name,
                           namespace=namespace, status=exc.status, reason=exc.reason))
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

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the FoundationModel's status subresource (only the fields given)."""
        resource = self._resource(v1alpha1.API_VERSION, v1alpha1.KIND)
        self.dynamic.patch(
            resource.subresources["status"],
            body={"status": dict(status)},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
            field_manager=self.field_manager,
            serializer=_as_dict,
        )

    def scale_foundation_model(self, namespace: str, name: str, replicas: int, manager: str) -> None:
        """Write a FoundationModel's scale subresource (spec.scaling.replicas), e.g. for the autoscaler."""
        resource = self._resource(v1alpha1.API_VERSION, v1alpha1.KIND)
        self.dynamic.patch(
            resource.subresources["scale"],
            body={"spec": {"replicas": int(replicas)}},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
            field_manager=manager,
            serializer=_as_dict,
        )

    def ensure_peering(self, name: str, namespaces: list[str]) -> None:
        """Create kopf's peering object(s): cluster-wide, or one per watched namespace (no globs)."""
        if not namespaces:
            targets = [("ClusterKopfPeering", None)]
        else:
            targets = [("KopfPeering", ns) for ns in namespaces if not any(ch in ns for ch in "*?[!")]
        for kind, namespace in targets:
            body: dict[str, Any] = {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": name}}
            if namespace:
                body["metadata"]["namespace"] = namespace
            self.dynamic.server_side_apply(
                self._resource("kopf.dev/v1", kind), body=body, namespace=namespace,
                field_manager=self.field_manager, force_conflicts=True,
            )
            log.info(kv(f"Applied {kind}", name=name, namespace=namespace))

    def post_event(
        self, fm: Mapping[str, Any], event_type: str, reason: str, message: str, now: datetime | None = None
    ) -> None:
        """A core/v1 Event on the FoundationModel, for `kubectl describe fm` readers."""
        metadata = fm["metadata"]
        stamp = rfc3339(now)
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
            "message": message[:1024],
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": REPORTING_COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.dynamic.create(
                self._resource("v1", "Event"), body=event, namespace=metadata["namespace"], serializer=_as_dict
            )
        except ApiException as exc:  # an Event is best effort: never fail a reconcile over one
            log.warning(kv("Failed to post Event", reason=reason, name=metadata["name"],
                           namespace=metadata["namespace"], status=exc.status))


def _past_tense(verb: str) -> str:
    return {"create": "Created", "update": "Updated", "delete": "Deleted"}[verb]
