"""What the gateway serves, from the FoundationModels and engine pods it watches (pure).

- `model_entry(body)`: a FoundationModel as the gateway needs it (served name, adapter names,
  routing policy, hold limits, API-key Secret), or None when it is not exposed through the
  gateway (spec.exposure.gateway.enabled, else the operator's resolution in
  status.resolved.gateway: one decision, the operator's) or cannot be parsed.
- `pod_endpoint(pod)`: a Ready, running engine pod with an IP as a routing Endpoint, with the
  LoRA adapters its own arguments load (--lora-modules), so an adapter name reaches only pods
  that serve it, a rollout that adds one included.
- `Catalog`: served names to models. Two models may not share a served name across namespaces:
  the oldest (creationTimestamp, then namespace/name) keeps it, the others are reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.deployment import CONTAINER_NAME, PORT_NAME
from kiban.builders.labels import MANAGED_BY_LABEL, MANAGED_BY_VALUE, MODEL_LABEL
from kiban.builders.names import label_value
from kiban.gateway.routing import Endpoint, RoutingPolicy

ENGINE_POD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{MODEL_LABEL}"
ROLE_LABEL = "kiban.dev/role"  # multi-node replicas (LeaderWorkerSet): only the leader serves
ModelRef = tuple[str, str]  # (namespace, FoundationModel name)


@dataclass(frozen=True)
class ModelEntry:
    """One gateway-exposed FoundationModel."""

    namespace: str
    name: str
    served_name: str
    adapters: frozenset[str]
    policy: RoutingPolicy
    max_held: int
    max_hold_s: float
    key_secret: tuple[str, str] | None  # (Secret name, key) in the model's namespace
    created: str = ""  # metadata.creationTimestamp: who keeps a contested name

    @property
    def ref(self) -> ModelRef:
        return (self.namespace, self.name)

    @property
    def pod_label(self) -> str:
        """The kiban.dev/model label value its engine pods carry."""
        return label_value(self.name)

    def names(self) -> tuple[str, ...]:
        return (self.served_name, *sorted(self.adapters))


def exposed_through_gateway(body: Mapping[str, Any]) -> bool:
    """spec.exposure.gateway.enabled when set, else what the operator resolved (status)."""
    explicit = (((body.get("spec") or {}).get("exposure") or {}).get("gateway") or {}).get("enabled")
    if explicit is not None:
        return bool(explicit)
    return bool((((body.get("status") or {}).get("resolved") or {}).get("gateway")))


def model_entry(body: Mapping[str, Any]) -> ModelEntry | None:
    if not exposed_through_gateway(body):
        return None
    try:
        fm = FoundationModel.from_object(body)
    except ValidationError:
        return None  # the operator reports it in a condition; the gateway serves nothing for it
    gateway = fm.spec.exposure.gateway
    ref = fm.spec.api_key_secret_ref
    return ModelEntry(
        namespace=fm.namespace or "",
        name=fm.name,
        served_name=fm.served_model_name,
        adapters=frozenset(a.name for a in fm.spec.adapters),
        policy=RoutingPolicy(prefix_affinity=gateway.routing == "PrefixAffinity",
                             prefix_characters=gateway.prefix_characters, load_factor=gateway.load_factor),
        max_held=gateway.max_held_requests,
        max_hold_s=float(gateway.max_hold_seconds),
        key_secret=(ref.name, ref.key) if ref is not None else None,
        created=str((body.get("metadata") or {}).get("creationTimestamp") or ""),
    )


def lora_names(args: Iterable[str]) -> frozenset[str]:
    """Adapter names from vLLM's `--lora-modules name=path ...` (and `--lora-modules=name=path`)."""
    names: set[str] = set()
    taking = False
    for arg in args:
        if arg.startswith("--lora-modules="):
            arg, taking = arg.split("=", 1)[1], False
            names.add(arg.split("=", 1)[0])
            continue
        if arg == "--lora-modules":
            taking = True
            continue
        if arg.startswith("-"):
            taking = False
            continue
        if taking and "=" in arg:
            names.add(arg.split("=", 1)[0])
    return frozenset(names)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def pod_endpoint(pod: Mapping[str, Any]) -> Endpoint | None:
    """A ready engine pod as an Endpoint (its IP and the engine's `http` port); None when not
    routable: not Ready, no IP, or no `http` port (a multi-node replica's headless workers
    serve no API; only its leader, role=leader, does)."""
    if not pod_ready(pod):
        return None
    role = ((pod.get("metadata") or {}).get("labels") or {}).get(ROLE_LABEL)
    ip = (pod.get("status") or {}).get("podIP")
    if not ip or role not in (None, "leader"):
        return None
    containers = (pod.get("spec") or {}).get("containers") or []
    engine = next((c for c in containers if c.get("name") == CONTAINER_NAME), containers[0] if containers else {})
    port = next((p.get("containerPort") for p in engine.get("ports") or () if p.get("name") == PORT_NAME), None)
    if port is None:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return Endpoint(name=(pod.get("metadata") or {}).get("name", ""), address=f"{host}:{port}",
                    adapters=lora_names(list(engine.get("command") or []) + list(engine.get("args") or [])))


def pod_model(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, kiban.dev/model label) of an engine pod."""
    metadata = pod.get("metadata") or {}
    label = (metadata.get("labels") or {}).get(MODEL_LABEL)
    return (metadata.get("namespace") or "", label) if label else None


@dataclass
class Catalog:
    """Served names (model and adapter names) to the model entry that owns them."""

    by_name: dict[str, ModelEntry] = field(default_factory=dict)
    conflicts: dict[str, list[ModelRef]] = field(default_factory=dict)  # name -> refs that lost it

    @classmethod
    def of(cls, entries: Iterable[ModelEntry]) -> Catalog:
        catalog = cls()
        for entry in sorted(entries, key=lambda e: (e.created, e.namespace, e.name)):
            for name in entry.names():
                if name in catalog.by_name:
                    catalog.conflicts.setdefault(name, []).append(entry.ref)
                else:
                    catalog.by_name[name] = entry
        return catalog
