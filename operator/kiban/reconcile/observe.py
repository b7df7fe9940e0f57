"""Observe: what exists. Reads only; never writes.

Children and pods are seen through kopf indexes (an in-memory informer cache filled by kopf's
watches), so a reconcile pass costs no list calls: the pass that runs after a write sees the
write when its watch event arrives, and the child's event itself triggers that pass. The
projections here keep only the fields plan and status read, to keep memory flat at 1,000 models.
Which optional APIs exist (PodMonitor, Route, InferencePool, LeaderWorkerSet) is read from discovery
and cached.
"""

from __future__ import annotations

import fnmatch
import logging
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient, ApisApi
from kubernetes.client.exceptions import ApiException

from kiban.api import v1alpha1
from kiban.builders.common import stamped_spec_hash
from kiban.builders.labels import INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE
from kiban.reconcile.logfmt import kv
from kiban.reconcile.plan import child_key

log = logging.getLogger("kiban.observe")

MANAGED_LABELS = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}


@dataclass(frozen=True)
class ChildResource:
    """A kind of child the operator may own, and the index that caches it."""

    group: str
    version: str
    plural: str
    optional: bool = False  # only when the API is served (discovery)

    @property
    def index_id(self) -> str:
        return f"kiban_children_{self.plural}"


CHILD_RESOURCES: tuple[ChildResource, ...] = (
    ChildResource("apps", "v1", "deployments"),
    ChildResource("", "v1", "services"),
    ChildResource("", "v1", "persistentvolumeclaims"),
    ChildResource("policy", "v1", "poddisruptionbudgets"),
    ChildResource("networking.k8s.io", "v1", "networkpolicies"),
    ChildResource("monitoring.coreos.com", "v1", "podmonitors", optional=True),
    ChildResource("route.openshift.io", "v1", "routes", optional=True),
    ChildResource("inference.networking.k8s.io", "v1", "inferencepools", optional=True),
    ChildResource("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", optional=True),
)
# the kinds that run the engine pods: one of them per model (kiban.builders.build_children)
WORKLOAD_KINDS = ("Deployment", "LeaderWorkerSet")
PODS_INDEX = "kiban_pods"
MODELS_INDEX = "kiban_models"
OPTIONAL_GROUPS = frozenset(c.group for c in CHILD_RESOURCES if c.optional)

ModelRef = tuple[str, str]  # (namespace, FoundationModel name)


def owner_model(body: Mapping[str, Any]) -> ModelRef | None:
    """The FoundationModel a child belongs to: its controller owner reference, else its instance label."""
    metadata = body.get("metadata") or {}
    namespace = metadata.get("namespace") or ""
    for ref in metadata.get("ownerReferences") or ():
        if ref.get("kind") == v1alpha1.KIND and ref.get("apiVersion", "").startswith(v1alpha1.GROUP + "/"):
            return (namespace, ref.get("name", ""))
    instance = (metadata.get("labels") or {}).get(INSTANCE_LABEL)
    return (namespace, instance) if instance else None


def project_child(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a child that plan and status read (no managedFields, no data)."""
    metadata = body.get("metadata") or {}
    return compact({
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "uid", "generation", "labels", "annotations", "ownerReferences")
            if key in metadata
        },
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    })


def project_model(body: Mapping[str, Any]) -> dict[str, Any]:
    """A FoundationModel as passes and the autoscaler read it: all but metadata.managedFields."""
    return compact({key: ({k: v for k, v in value.items() if k != "managedFields"}
                          if key == "metadata" and isinstance(value, Mapping) else value)
                    for key, value in body.items()})


def compact(value: Any) -> Any:
    """plain() (plain dicts and lists), with every string, keys too, interned: the index then
    holds one copy of each string a thousand children repeat (image, args, env, probes, label
    keys), where each watch event's JSON decoding made its own. Interned strings go when the
    last entry holding them does."""
    if isinstance(value, Mapping):
        return {(sys.intern(k) if type(k) is str else k): compact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [compact(v) for v in value]
    return sys.intern(value) if type(value) is str else value


POD_REVISION_LABELS = ("pod-template-hash", "controller-revision-hash")  # which template a pod was made from


def _pod_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Name and uid (status), creation time and revision label (the autoscaler's learned cold start)."""
    labels = metadata.get("labels") or {}
    return {"name": metadata.get("name"), "uid": metadata.get("uid"),
            "creationTimestamp": metadata.get("creationTimestamp"),
            "labels": {k: labels[k] for k in POD_REVISION_LABELS if k in labels}}


def _container_state(state: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("waiting", "terminated"):
        part = (state or {}).get(kind)
        if part:
            out[kind] = {k: (str(part[k])[:500] if k == "message" else part[k])
                         for k in ("reason", "message", "exitCode") if part.get(k) is not None}
    return out


def project_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a pod status and the autoscaler need: name, node, phase, conditions, when it
    was created and from which template (the learned cold start), and, per container, why it is
    not running (waiting/terminated reason, message, exit code, restarts)."""
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    containers = [
        {"name": c.get("name"), "restartCount": c.get("restartCount", 0),
         "state": _container_state(c.get("state")), "lastState": _container_state(c.get("lastState"))}
        for c in status.get("containerStatuses") or ()
    ]
    projected = {
        "metadata": _pod_metadata(metadata),
        "spec": {"nodeName": (body.get("spec") or {}).get("nodeName")},
        "status": {
            "phase": status.get("phase"),
            "conditions": status.get("conditions") or [],
        },
    }
    if containers:
        projected["status"]["containerStatuses"] = containers
    return compact(projected)


def from_index(index: Mapping[ModelRef, Iterable[Any]] | None, ref: ModelRef) -> list[dict[str, Any]]:
    """A snapshot (plain list) of one model's entries in a kopf index; empty when none."""
    if index is None:
        return []
    store = index.get(ref)
    return [dict(item) for item in store] if store is not None else []


def observed_children(indexes: Mapping[str, Any], ref: ModelRef) -> list[dict[str, Any]]:
    """Every cached child of one FoundationModel, across all child kinds."""
    children: list[dict[str, Any]] = []
    for resource in CHILD_RESOURCES:
        children.extend(from_index(indexes.get(resource.index_id), ref))
    return children


def overlay_applied(
    cached: Iterable[Mapping[str, Any]], applied: Mapping[Any, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The cache, corrected by what our own writes returned while the watch catches up.

    For each child we applied: the cached copy wins when it carries the same spec-hash (it may
    hold a newer status, or a hand edit to put back); otherwise (absent, or older) the copy the
    server returned from our apply stands in. Without this, every pass triggered before the
    watch delivers our own write would apply the same objects again.
    """
    merged = {child_key(c): dict(c) for c in cached}
    for key, ours in applied.items():
        theirs = merged.get(key)
        if theirs is None or stamped_spec_hash(theirs) != stamped_spec_hash(ours):
            merged[key] = dict(ours)
    return list(merged.values())


def settled(cached: Iterable[Mapping[str, Any]], applied: Mapping[Any, Mapping[str, Any]]) -> list[Any]:
    """Keys of our writes the cache has caught up with (same spec-hash): overlay_applied no longer
    needs them, and dropping them keeps a second copy of every child out of memory."""
    seen = {child_key(c): stamped_spec_hash(c) for c in cached}
    return [key for key, ours in applied.items() if key in seen and seen[key] == stamped_spec_hash(ours)]


def find_kind(children: Iterable[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in children if c.get("kind") == kind), None)


def workload_kind(multi_node: bool) -> str:
    return "LeaderWorkerSet" if multi_node else "Deployment"


def ready_replicas(children: Iterable[Mapping[str, Any]], multi_node: bool) -> int:
    """Ready replicas of a model: Deployment pods, or LeaderWorkerSet groups whose every pod is
    ready (the LWS controller counts a group only when its leader and worker StatefulSet are)."""
    workload = find_workload(children, workload_kind(multi_node))
    return int(((workload or {}).get("status") or {}).get("readyReplicas") or 0)


def find_workload(children: Iterable[Mapping[str, Any]], kind: str | None = None) -> Mapping[str, Any] | None:
    """The model's Deployment or LeaderWorkerSet (`kind` picks one while both exist, mid-switch).
    Both report status.replicas / readyReplicas / updatedReplicas, in replicas (LWS: groups)."""
    children = list(children)
    if kind is not None:
        return find_kind(children, kind)
    return next((c for c in children if c.get("kind") in WORKLOAD_KINDS), None)


class ApiDiscovery:
    """Which optional group/versions the server serves (e.g. monitoring.coreos.com/v1), cached `ttl` s."""

    def __init__(self, api: ApiClient, ttl: float = 60.0) -> None:
        self.api = api
        self.ttl = ttl
        self._groups: frozenset[str] = frozenset()
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def served_groups(self) -> frozenset[str]:
        with self._lock:
            if time.monotonic() - self._read_at < self.ttl:
                return self._groups
            try:
                groups = ApisApi(self.api).get_api_versions().groups or []
                self._groups = frozenset(
                    v.group_version for g in groups if g.name in OPTIONAL_GROUPS for v in g.versions or ()
                )
                self._read_at = time.monotonic()
            except ApiException as exc:  # keep the last answer: a blip must not delete monitors
                if self._read_at == float("-inf"):
                    raise
                log.warning(kv("Failed to read API discovery; kept the last answer", status=exc.status))
            return self._groups


# -- the resync's fresh reads (kiban.reconcile.resync) -----------------------------------------

LIST_PAGE = 500  # objects per list call (paginated with `continue`)
LIST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class View:
    """One model as a fresh list saw it: its body (None: gone), its children and pods."""

    body: dict[str, Any] | None
    children: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    listed_at: float = 0.0  # time.monotonic() when the list began


@dataclass
class ListedWorld:
    """Every model, child and pod in the watched namespaces, grouped by owning model."""

    models: dict[ModelRef, dict[str, Any]] = field(default_factory=dict)
    children: dict[ModelRef, list[dict[str, Any]]] = field(default_factory=dict)
    pods: dict[ModelRef, list[dict[str, Any]]] = field(default_factory=dict)
    child_count: int = 0
    listed_at: float = 0.0

    def view(self, ref: ModelRef) -> View:
        from kiban.builders.names import label_value

        pods = self.pods.get((ref[0], label_value(ref[1])), [])  # pods are keyed by their instance label
        return View(self.models.get(ref), self.children.get(ref, []), pods, self.listed_at)


def in_scope(namespace: str, patterns: Sequence[str]) -> bool:
    """Whether the operator watches `namespace` (no patterns: every namespace; globs allowed)."""
    return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)


class Lister:
    """Paginated lists through one ApiClient (reads only), for the resync."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self._dynamic = None
        self._lock = threading.Lock()

    @property
    def dynamic(self):
        from kubernetes.dynamic import DynamicClient

        with self._lock:
            if self._dynamic is None:
                self._dynamic = DynamicClient(self.api)
            return self._dynamic

    def _list(self, api_version: str, kind: str, namespaces: Sequence[str], labels: str | None) -> list[dict]:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            return []  # an optional API this cluster does not serve
        exact = [ns for ns in namespaces if not any(ch in ns for ch in "*?[")]
        targets: list[str | None] = exact if namespaces and len(exact) == len(namespaces) else [None]
        items: list[dict] = []
        for namespace in targets:
            token = None
            while True:
                page = self.dynamic.get(resource, namespace=namespace, label_selector=labels, limit=LIST_PAGE,
                                        _continue=token, serializer=lambda _c, data: data,
                                        _request_timeout=LIST_TIMEOUT_S)
                items.extend(i for i in page.get("items") or ()
                             if in_scope((i.get("metadata") or {}).get("namespace", ""), namespaces))
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
        for item in items:  # list items carry no apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def list_world(self, namespaces: Sequence[str]) -> ListedWorld:
        world = ListedWorld(listed_at=time.monotonic())
        for body in self._list(v1alpha1.API_VERSION, v1alpha1.KIND, namespaces, None):
            metadata = body.get("metadata") or {}
            world.models[(metadata.get("namespace", ""), metadata.get("name", ""))] = project_model(body)
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_LABELS.items())
        for resource in CHILD_RESOURCES:
            api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
            kind = _KINDS[resource.plural]
            for body in self._list(api_version, kind, namespaces, selector):
                ref = owner_model(body)
                if ref is not None:
                    world.children.setdefault(ref, []).append(project_child(body))
                    world.child_count += 1
        for body in self._list("v1", "Pod", namespaces, selector):
            ref = owner_model(body)
            if ref is not None:
                world.pods.setdefault(ref, []).append(project_pod(body))
        return world


_KINDS = {
    "deployments": "Deployment", "services": "Service", "persistentvolumeclaims": "PersistentVolumeClaim",
    "poddisruptionbudgets": "PodDisruptionBudget", "networkpolicies": "NetworkPolicy",
    "podmonitors": "PodMonitor", "routes": "Route", "inferencepools": "InferencePool",
    "leaderworkersets": "LeaderWorkerSet",
}
