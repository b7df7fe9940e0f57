"""Plan: compare the children we want with the children that exist, decide what to write.

Pure: plain dicts in, a `Plan` out, every action with a reason a person can read. Nothing here
talks to the API; apply.py carries the plan out.

Rules
- A desired child that does not exist is created; one that exists but differs in a field we
  set (a semantic subset comparison, so server-side defaults never count as differences) is
  updated. The `kiban.dev/spec-hash` annotation makes a changed spec visible at a glance.
- An object that has a child's name but is not ours is never written: it is a conflict.
- Only children we own are ever deleted: a controller owner reference to this FoundationModel's
  uid AND the app.kubernetes.io/managed-by=kiban label. Anything else is left alone.
- Kinds in KEPT_KINDS (the model-cache PersistentVolumeClaim) are never deleted by a plan,
  even when the spec stops asking for them: downloaded weights are expensive and the user may
  still want them. They go when the FoundationModel goes (garbage collection via the owner
  reference), or when the user deletes them. Nor are they ever updated once they exist:
  most of a claim's spec is immutable (accessModes, storageClassName; its size can only
  grow), so an update would be rejected (422) on every pass; the existing claim is used as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kubernetes.utils.quantity import parse_quantity

from kiban.builders.common import stamped_spec_hash
from kiban.builders.labels import MANAGED_BY_LABEL, MANAGED_BY_VALUE

KEPT_KINDS = frozenset({"PersistentVolumeClaim"})

Verb = Literal["create", "update", "delete"]
ChildKey = tuple[str, str, str]  # (API group, kind, name)


@dataclass(frozen=True)
class Action:
    """One write to perform, and why."""

    verb: Verb
    obj: Mapping[str, Any]  # the desired object (create/update) or the observed one (delete)
    reason: str

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        return str(self.obj.get("metadata", {}).get("name", ""))


@dataclass(frozen=True)
class Plan:
    """What to write this pass.

    `kept` names owned children deliberately not deleted; `conflicts` names objects that have a
    child's name but are not ours: we never take those over (status reports them instead).
    """

    creates: tuple[Action, ...] = ()
    updates: tuple[Action, ...] = ()
    deletes: tuple[Action, ...] = ()
    kept: tuple[str, ...] = field(default=())
    conflicts: tuple[str, ...] = field(default=())

    @property
    def actions(self) -> tuple[Action, ...]:
        return (*self.creates, *self.updates, *self.deletes)

    @property
    def empty(self) -> bool:
        return not self.actions


def api_group(api_version: str) -> str:
    """"apps/v1" -> "apps"; "v1" -> "" (the core group)."""
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def child_key(obj: Mapping[str, Any]) -> ChildKey:
    """Identity of a child inside one namespace: group, kind and name (not the version)."""
    return (
        api_group(str(obj.get("apiVersion", ""))),
        str(obj.get("kind", "")),
        str(obj.get("metadata", {}).get("name", "")),
    )


def describe(obj: Mapping[str, Any]) -> str:
    group, kind, name = child_key(obj)
    return f"{kind}/{name}"



def is_owned_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    """True only for a child that names `owner_uid` as controller AND carries our managed-by label."""
    metadata = obj.get("metadata", {})
    if (metadata.get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE:
        return False
    return any(
        ref.get("uid") == owner_uid and ref.get("controller", False)
        for ref in metadata.get("ownerReferences") or ()
    )


def _is_empty(value: Any) -> bool:
    return value is None or value == {} or value == []


def _same_scalar(path: str, desired: Any, observed: Any) -> bool:
    if desired == observed:
        return True
    if isinstance(desired, bool) or isinstance(observed, bool):
        return False
    # the API server normalises resource quantities ("1000m" -> "1", 2 -> "2")
    if "resources" in path or "storage" in path:
        try:
            return parse_quantity(desired) == parse_quantity(observed)
        except (ValueError, TypeError):
            return False
    return False


def first_difference(desired: Any, observed: Any, path: str = "") -> str | None:
    """The first field we set whose observed value differs, as a path; None when none does.

    Semantic subset comparison: fields the server adds (defaults, status, managedFields) are
    not differences; an empty desired value matches an absent one.
    """
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return path or "."
        for key, value in desired.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in observed:
                if _is_empty(value):
                    continue
                return sub
            found = first_difference(value, observed[key], sub)
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(desired) != len(observed):
            return path
        for index, (want, have) in enumerate(zip(desired, observed, strict=True)):
            found = first_difference(want, have, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    return None if _same_scalar(path, desired, observed) else path


def _update_reason(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> str | None:
    want, have = stamped_spec_hash(desired), stamped_spec_hash(observed)
    if want is not None and want != have:
        return f"spec-hash changed from {have or 'none'} to {want}"
    differing = first_difference(desired, observed)
    if differing is not None:
        return f"{differing} was changed outside kiban; putting it back"
    return None


def plan(
    desired: Iterable[Mapping[str, Any]],
    observed: Iterable[Mapping[str, Any]],
    owner_uid: str,
) -> Plan:
    """Decide creates, updates and deletes that turn `observed` into `desired`."""
    wanted = {child_key(obj): obj for obj in desired}
    existing = {child_key(obj): obj for obj in observed}
    creates: list[Action] = []
    updates: list[Action] = []
    deletes: list[Action] = []
    kept: list[str] = []
    conflicts: list[str] = []
    for key, want in wanted.items():
        have = existing.get(key)
        if have is None:
            creates.append(Action("create", want, f"{describe(want)} does not exist"))
            continue
        if not is_owned_by(have, owner_uid):
            conflicts.append(f"{describe(want)} exists but is not owned by this FoundationModel")
            continue
        if key[1] in KEPT_KINDS:
            continue  # never updated (see the module docstring)
        reason = _update_reason(want, have)
        if reason is not None:
            updates.append(Action("update", want, reason))
    for key, have in existing.items():
        if key in wanted or not is_owned_by(have, owner_uid):
            continue
        if key[1] in KEPT_KINDS:
            kept.append(describe(have))
            continue
        deletes.append(Action("delete", have, f"{describe(have)} is no longer desired"))
    return Plan(tuple(creates), tuple(updates), tuple(deletes), tuple(kept), tuple(conflicts))
