"""observe: owner lookup, projections, and the overlay of our own writes on the cache."""

from __future__ import annotations

from kiban.reconcile.observe import overlay_applied, owner_model, project_child, project_pod
from kiban.builders.labels import SPEC_HASH_ANNOTATION
from kiban.reconcile.plan import child_key


def child(kind: str, name: str, spec_hash: str, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "annotations": {SPEC_HASH_ANNOTATION: spec_hash}},
        "spec": spec,
    }


def test_our_write_stands_in_until_the_watch_delivers_it():
    ours = child("Service", "m", "new")
    assert overlay_applied([], {child_key(ours): ours}) == [ours]
    stale = child("Service", "m", "old")
    assert overlay_applied([stale], {child_key(ours): ours}) == [ours]


def test_cached_copy_with_the_same_hash_wins_so_hand_edits_are_seen():
    ours = child("Service", "m", "h", type="ClusterIP")
    edited = child("Service", "m", "h", type="NodePort")
    other = child("Deployment", "m", "d")
    merged = overlay_applied([edited, other], {child_key(ours): ours})
    assert sorted(merged, key=lambda c: c["kind"]) == [other, edited]


def test_owner_is_the_foundationmodel_owner_reference_else_the_instance_label():
    owned = {"metadata": {"namespace": "ns", "ownerReferences": [
        {"apiVersion": "kiban.dev/v1alpha1", "kind": "FoundationModel", "name": "llama"}]}}
    pod = {"metadata": {"namespace": "ns", "labels": {"app.kubernetes.io/instance": "llama"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x"}]}}
    assert owner_model(owned) == ("ns", "llama")
    assert owner_model(pod) == ("ns", "llama")
    assert owner_model({"metadata": {"namespace": "ns"}}) is None


def test_projections_drop_what_plan_and_status_never_read():
    body = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "m", "managedFields": [{}], "uid": "u"}, "spec": {"replicas": 1}, "status": {}}
    assert "managedFields" not in project_child(body)["metadata"]
    pod = project_pod({"metadata": {"name": "p", "creationTimestamp": "2026-12-01T20:00:00Z",
                                    "labels": {"pod-template-hash": "abc", "app": "x"}},
                       "spec": {"nodeName": "n", "containers": [{}]},
                       "status": {"phase": "Running", "conditions": [], "podIP": "1.2.3.4"}})
    assert pod == {"metadata": {"name": "p", "uid": None, "creationTimestamp": "2026-12-01T20:00:00Z",
                                "labels": {"pod-template-hash": "abc"}}, "spec": {"nodeName": "n"},
                   "status": {"phase": "Running", "conditions": []}}


def test_index_entries_of_separately_decoded_objects_share_their_strings():
    """Two watch events decode two copies of every string; the projections keep one."""
    import json

    from kiban.reconcile.observe import project_model

    text = json.dumps({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "m-0001", "namespace": "bench", "labels": {"app.kubernetes.io/name": "vllm"}},
                       "spec": {"template": {"spec": {"containers": [{"image": "vllm/vllm-openai:v0.33.0",
                                                                       "args": ["--port", "8000"]}]}}},
                       "status": {"conditions": [{"type": "Available", "status": "True"}]}})
    first, second = (project_child(json.loads(text)) for _ in range(2))
    assert first == json.loads(text)
    container = (first["spec"]["template"]["spec"]["containers"][0], second["spec"]["template"]["spec"]["containers"][0])
    assert container[0]["image"] is container[1]["image"]
    assert container[0]["args"][0] is container[1]["args"][0]
    assert [k for k in container[0] if k == "image"][0] is [k for k in container[1] if k == "image"][0]
    labels = (first["metadata"]["labels"], second["metadata"]["labels"])
    assert next(iter(labels[0])) is next(iter(labels[1])) and labels[0] is not labels[1]
    assert first["status"]["conditions"][0]["status"] is second["status"]["conditions"][0]["status"]
    models = [project_model(json.loads(text)) for _ in range(2)]
    assert models[0]["metadata"]["namespace"] is models[1]["metadata"]["namespace"]
    pods = [project_pod({"metadata": {"name": "p", "creationTimestamp": "2026-12-01T20:00:00Z"},
                         "status": json.loads(text)["status"]}) for _ in range(2)]
    assert pods[0]["status"]["conditions"][0]["type"] is pods[1]["status"]["conditions"][0]["type"]


def test_settled_names_our_writes_the_cache_has_caught_up_with():
    from kiban.reconcile.observe import settled
    from kiban.reconcile.plan import child_key

    def child(name: str, spec_hash: str) -> dict:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "annotations": {"kiban.dev/spec-hash": spec_hash}}}

    ours = {child_key(c): c for c in (child("caught-up", "h1"), child("older-in-cache", "h2"), child("not-seen", "h3"))}
    cached = [child("caught-up", "h1"), child("older-in-cache", "h0")]
    assert settled(cached, ours) == [child_key(child("caught-up", "h1"))]


def test_the_model_index_keeps_everything_but_managed_fields():
    from kiban.reconcile.observe import project_model

    body = {"metadata": {"name": "m", "managedFields": [{"manager": "kubectl"}], "labels": {"a": "b"}},
            "spec": {"x": 1}, "status": {"y": 2}}
    assert project_model(body) == {"metadata": {"name": "m", "labels": {"a": "b"}}, "spec": {"x": 1}, "status": {"y": 2}}
    assert body["metadata"]["managedFields"]  # the input is left alone


def test_the_resync_lists_every_child_kind_by_the_kind_its_api_serves():
    """Each child API is listed under the kind the API server serves it as (a plural the
    resync cannot name would end every resync with a KeyError)."""
    from kiban.reconcile.observe import Lister

    class Dynamic:
        def __init__(self):
            self.asked = []
            self.resources = self

        def get(self, resource=None, **kwargs):
            if "api_version" in kwargs:  # resources.get(api_version=..., kind=...)
                self.asked.append((kwargs["api_version"], kwargs["kind"]))
                return (kwargs["api_version"], kwargs["kind"])
            return {"items": [], "metadata": {}}

    lister = Lister(api=None)
    lister._dynamic = Dynamic()
    lister.list_world(["models"])
    assert set(lister._dynamic.asked) >= {
        ("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "PersistentVolumeClaim"),
        ("policy/v1", "PodDisruptionBudget"), ("networking.k8s.io/v1", "NetworkPolicy"),
        ("monitoring.coreos.com/v1", "PodMonitor"), ("route.openshift.io/v1", "Route"),
        ("inference.networking.k8s.io/v1", "InferencePool"), ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
    }
