"""The pieces of a pass that decide order and whether to run at all (pure)."""

from __future__ import annotations

from kiban.handlers import fingerprint
from kiban.reconcile.plan import Action, Plan
from kiban.reconcile.run import execute, write_stages


def obj(kind: str, name: str = "m") -> dict:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}


def test_the_deployment_is_written_first_then_the_rest_together_then_deletes():
    the_plan = Plan(
        creates=(Action("create", obj("Service"), "new"), Action("create", obj("Deployment"), "new")),
        updates=(Action("update", obj("PodDisruptionBudget"), "changed"),),
        deletes=(Action("delete", obj("NetworkPolicy"), "gone"),),
    )
    stages = [[(a.verb, a.kind) for a in stage.actions] for stage in write_stages(the_plan)]
    assert stages == [
        [("create", "Deployment")],
        [("create", "Service"), ("update", "PodDisruptionBudget")],
        [("delete", "NetworkPolicy")],
    ]


def test_a_pass_keeps_the_projection_of_what_its_writes_returned_not_the_whole_response():
    import asyncio

    from kiban.reconcile.apply import ApplyResult
    from kiban.reconcile.plan import describe

    def response(action: Action) -> dict:
        return {**action.obj, "metadata": {**action.obj["metadata"], "uid": "u1", "resourceVersion": "9",
                                           "managedFields": [{"manager": "kiban", "fieldsV1": {"f:spec": {}}}]},
                "spec": {"replicas": 1}, "status": {"readyReplicas": 0}}

    class Writer:
        def execute_one(self, action: Action, namespace: str) -> ApplyResult:
            return ApplyResult(returned={describe(action.obj): response(action)}, written=[action])

    class Context:
        writer = Writer()

        async def io(self, fn, *args, priority: int = 0):
            return fn(*args)

    the_plan = Plan(creates=(Action("create", obj("Deployment"), "new"), Action("create", obj("Service"), "new")))
    result = asyncio.run(execute(Context(), the_plan, "ns"))
    assert set(result.returned) == {"Deployment/m", "Service/m"}
    deployment = result.returned["Deployment/m"]
    assert "managedFields" not in deployment["metadata"] and "resourceVersion" not in deployment["metadata"]
    assert deployment["metadata"]["uid"] == "u1"
    assert deployment["spec"] == {"replicas": 1} and deployment["status"] == {"readyReplicas": 0}


def test_empty_stages_are_left_out():
    assert write_stages(Plan()) == []
    only_service = write_stages(Plan(creates=(Action("create", obj("Service"), "new"),)))
    assert [[a.kind for a in s.actions] for s in only_service] == [["Service"]]


def model(generation: int, labels: dict | None = None, status: dict | None = None) -> dict:
    return {"metadata": {"generation": generation, "labels": labels or {}, "resourceVersion": str(generation * 7)},
            "status": status or {}}


def test_a_status_only_change_keeps_the_fingerprint():
    before = model(1)
    after = {**model(1, status={"replicas": 1}), "metadata": {**before["metadata"], "resourceVersion": "99"}}
    assert fingerprint(before) == fingerprint(after)


def test_spec_label_or_deletion_changes_change_the_fingerprint():
    base = model(1)
    assert fingerprint(model(2)) != fingerprint(base)
    assert fingerprint(model(1, labels={"team": "a"})) != fingerprint(base)
    deleting = {"metadata": {**base["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert fingerprint(deleting) != fingerprint(base)
