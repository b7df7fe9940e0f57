"""Object metadata every child shares: name, namespace, labels, owner reference, spec hash.

Every builder stamps its object here, so what a builder returns is already owned: the
controller owner reference (when the FoundationModel has a uid) and the managed-by label,
the two marks reconcile.plan requires before it ever deletes or updates a child, and the
`kiban.dev/spec-hash` annotation the plan compares first.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kiban.api.v1alpha1 import API_VERSION, KIND, FoundationModel
from kiban.builders.labels import SPEC_HASH_ANNOTATION, common_labels


def owner_references(fm: FoundationModel) -> list[dict[str, Any]]:
    """The FoundationModel as controller owner, so children are garbage-collected with it."""
    if not fm.metadata.uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": fm.name,
            "uid": fm.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def object_meta(fm: FoundationModel, name: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**common_labels(fm), **(labels or {})}}
    if fm.namespace:
        meta["namespace"] = fm.namespace
    owners = owner_references(fm)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def spec_hash(obj: Mapping[str, Any]) -> str:
    """A short, stable hash of an object's content, ignoring any spec-hash already on it (and
    the empty annotations or metadata left once it is removed)."""
    stripped = json.loads(json.dumps(obj, sort_keys=True, default=str))
    metadata = stripped.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("annotations"), dict):
        metadata["annotations"].pop(SPEC_HASH_ANNOTATION, None)
        if not metadata["annotations"]:
            del metadata["annotations"]
        if not metadata:
            del stripped["metadata"]
    canonical = json.dumps(stripped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def with_spec_hash(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `obj` annotated with kiban.dev/spec-hash, so the planner can tell stale children cheaply."""
    out = copy.deepcopy(dict(obj))
    out.setdefault("metadata", {}).setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = spec_hash(obj)
    return out


def stamped_spec_hash(obj: Mapping[str, Any] | None) -> str | None:
    """The kiban.dev/spec-hash an object carries (None when it carries none)."""
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
