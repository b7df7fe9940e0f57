"""plan(): creates, updates and deletes from plain dicts, each with a reason."""

from __future__ import annotations

import copy

from kiban.builders.common import spec_hash
from kiban.builders.common import with_spec_hash as stamp_spec_hash
from kiban.builders.labels import SPEC_HASH_ANNOTATION
from kiban.reconcile.plan import first_difference, is_owned_by, plan

OWNER_UID = "0f1e2d3c-uid"


def owned(kind: str, name: str, api_version: str = "v1", **body) -> dict:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "kiban"},
            "ownerReferences": [{"uid": OWNER_UID, "controller": True, "kind": "FoundationModel"}],
        },
        **body,
    }


def deployment(image: str = "vllm/vllm-openai:v0.8.0", replicas: int = 1) -> dict:
    return stamp_spec_hash(
        owned(
            "Deployment",
            "llama",
            "apps/v1",
            spec={
                "replicas": replicas,
                "template": {"spec": {"containers": [{"name": "vllm", "image": image}]}},
            },
        )
    )


def as_observed(obj: dict) -> dict:
    """What the API server hands back: our fields plus defaults and status."""
    seen = copy.deepcopy(obj)
    seen["metadata"]["uid"] = "child-uid"
    seen["metadata"]["managedFields"] = [{"manager": "kiban"}]
    seen["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
    seen["status"] = {"replicas": 1}
    return seen


def test_absent_child_is_created_with_reason():
    result = plan([deployment()], [], OWNER_UID)
    assert [a.verb for a in result.actions] == ["create"]
    assert result.creates[0].reason == "Deployment/llama does not exist"


def test_server_defaults_are_not_differences():
    want = deployment()
    assert plan([want], [as_observed(want)], OWNER_UID).empty


def test_spec_change_updates_with_new_hash():
    old, new = deployment("img:1"), deployment("img:2")
    result = plan([new], [as_observed(old)], OWNER_UID)
    assert [a.verb for a in result.actions] == ["update"]
    assert "spec-hash changed" in result.updates[0].reason
    assert old["metadata"]["annotations"][SPEC_HASH_ANNOTATION] in result.updates[0].reason


def test_hand_edited_child_is_put_back():
    want = deployment("img:1")
    edited = as_observed(want)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    result = plan([want], [edited], OWNER_UID)
    assert [a.verb for a in result.actions] == ["update"]
    assert "spec.template.spec.containers[0].image" in result.updates[0].reason


def test_owned_child_no_longer_desired_is_deleted():
    monitor = owned("ServiceMonitor", "llama", "monitoring.coreos.com/v1", spec={})
    result = plan([], [monitor], OWNER_UID)
    assert [(a.verb, a.kind) for a in result.actions] == [("delete", "ServiceMonitor")]
    assert "no longer desired" in result.deletes[0].reason


def test_children_of_another_owner_or_unlabelled_are_never_deleted():
    foreign = owned("Service", "other", spec={})
    foreign["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    unlabelled = owned("Service", "manual", spec={})
    unlabelled["metadata"]["labels"] = {}
    assert plan([], [foreign, unlabelled], OWNER_UID).empty


def test_model_cache_pvc_is_kept_not_deleted():
    pvc = owned("PersistentVolumeClaim", "llama-cache", spec={})
    result = plan([], [pvc], OWNER_UID)
    assert result.empty
    assert result.kept == ("PersistentVolumeClaim/llama-cache",)


def test_existing_model_cache_pvc_is_never_updated():
    """accessModes and storageClassName are immutable and a claim cannot shrink: an update is a 422 forever."""
    def pvc(size: str, mode: str, storage_class: str) -> dict:
        return stamp_spec_hash(owned(
            "PersistentVolumeClaim", "llama-cache",
            spec={"accessModes": [mode], "storageClassName": storage_class,
                  "resources": {"requests": {"storage": size}}},
        ))

    have = pvc("100Gi", "ReadWriteOnce", "standard")
    want = pvc("50Gi", "ReadWriteMany", "fast")
    assert want["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != have["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    result = plan([want], [have], OWNER_UID)
    assert result.empty
    assert result.conflicts == ()
    # still created when missing
    assert [(a.verb, a.kind) for a in plan([want], [], OWNER_UID).actions] == [("create", "PersistentVolumeClaim")]


def test_object_with_our_name_but_not_ours_is_a_conflict_not_a_write():
    want = owned("Service", "llama", spec={"ports": [{"port": 8000}]})
    theirs = copy.deepcopy(want)
    theirs["metadata"]["ownerReferences"] = []
    result = plan([want], [theirs], OWNER_UID)
    assert result.empty
    assert result.conflicts == ("Service/llama exists but is not owned by this FoundationModel",)


def test_plan_is_idempotent_after_applying():
    want = [deployment(), owned("Service", "llama", spec={"ports": [{"port": 8000}]})]
    first = plan(want, [], OWNER_UID)
    world = [as_observed(a.obj) if a.kind == "Deployment" else dict(a.obj) for a in first.creates]
    assert plan(want, world, OWNER_UID).empty


def test_quantities_compare_by_value():
    want = {"spec": {"resources": {"limits": {"cpu": "1000m", "nvidia.com/gpu": 2}}}}
    have = {"spec": {"resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "2"}}}}
    assert first_difference(want, have) is None
    have["spec"]["resources"]["limits"]["nvidia.com/gpu"] = "4"
    assert first_difference(want, have) == "spec.resources.limits.nvidia.com/gpu"


def test_list_length_change_is_a_difference():
    assert first_difference({"a": [1, 2]}, {"a": [1]}) == "a"
    assert first_difference({"a": {}}, {}) is None


def test_spec_hash_ignores_its_own_annotation_and_tracks_content():
    obj = {"kind": "Service", "spec": {"x": 1}}
    stamped = stamp_spec_hash(obj)
    assert spec_hash(stamped) == spec_hash(obj)
    assert spec_hash({"kind": "Service", "spec": {"x": 2}}) != spec_hash(obj)


def test_ownership_needs_controller_reference_and_label():
    obj = owned("Service", "x")
    assert is_owned_by(obj, OWNER_UID)
    obj["metadata"]["ownerReferences"][0]["controller"] = False
    assert not is_owned_by(obj, OWNER_UID)
