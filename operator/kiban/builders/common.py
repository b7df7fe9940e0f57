"""Object metadata every child shares: name, namespace, labels, owner reference, spec hash."""

from __future__ import annotations

import copy
import hashlib
import json
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


def spec_hash(obj: dict[str, Any]) -> str:
    """Hash of everything the builder decided for `obj` (its own hash annotation excluded)."""
    body = copy.deepcopy(obj)
    body.get("metadata", {}).get("annotations", {}).pop(SPEC_HASH_ANNOTATION, None)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def with_spec_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` annotated with kiban.dev/spec-hash, so the planner can tell stale children cheaply."""
    out = copy.deepcopy(obj)
    out.setdefault("metadata", {}).setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = spec_hash(obj)
    return out
