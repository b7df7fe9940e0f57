"""Names and label values for the objects a FoundationModel owns (DNS-1035 labels, truncated with a hash).

A FoundationModel's name is a DNS-1123 subdomain (up to 253 characters, dots allowed, may start
with a digit); Services need DNS-1035 labels (63 characters, a letter first, no dots). Names
that already qualify are used unchanged, so `llama-8b` owns Deployment and Service `llama-8b`;
others are cleaned and, when cleaning or truncation changed them, suffixed with a hash of the
original so two FoundationModels never collide.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
_HASH_LEN = 8
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def short_hash(text: str, length: int = _HASH_LEN) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def dns_label(name: str, suffix: str = "", max_length: int = MAX_LABEL) -> str:
    """`name[-suffix]` as a DNS-1035 label of at most max_length characters, deterministic and collision-safe."""
    wanted = f"{name}-{suffix}" if suffix else name
    if len(wanted) <= max_length and _DNS_1035.match(wanted):
        return wanted
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"m-{cleaned}".rstrip("-")
    tail = f"-{short_hash(name)}" + (f"-{suffix}" if suffix else "")
    head = cleaned[: max_length - len(tail)].rstrip("-")
    return head + tail


def label_value(value: str) -> str:
    """`value` as a Kubernetes label value (at most 63 characters), truncated with a hash when needed."""
    if len(value) <= MAX_LABEL and _LABEL_VALUE.match(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")
    tail = f"-{short_hash(value)}"
    head = cleaned[: MAX_LABEL - len(tail)].rstrip("-_.")
    return (head + tail) if head else short_hash(value)


def workload_name(fm_name: str) -> str:
    """Deployment, Service, PodDisruptionBudget, NetworkPolicy, PodMonitor and Route share this name."""
    return dns_label(fm_name)


def cache_claim_name(fm_name: str) -> str:
    """The model-cache PersistentVolumeClaim."""
    return dns_label(fm_name, "cache")


# A LeaderWorkerSet's name goes into its StatefulSets (NAME, NAME-<group>), their pods
# (NAME-<group>-<rank>) and each pod's controller-revision-hash label (<statefulset>-<10 chars>,
# at most 63): 47 leaves room for 4-digit group indexes.
GROUP_SET_MAX = 47


def group_set_name(fm_name: str) -> str:
    """The LeaderWorkerSet of a multi-node model. Not the Service's name: LWS makes a headless
    Service of its own name for the leader addresses, which must not collide with the model's."""
    return dns_label(fm_name, "group", max_length=GROUP_SET_MAX)
