"""Defence in depth: a hostile spec the API server did not refuse (an object stored under an
older CRD: Helm never upgrades CRDs) is refused by the operator itself, before any child is
written, with Degraded/InvalidSpec naming the flag or variable."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
import yaml

from kiban.config import load_config
from kiban.metrics import OperatorMetrics
from kiban.reconcile import observe
from kiban.reconcile.apply import Writer
from kiban.reconcile.run import OperatorContext, reconcile

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = yaml.safe_load((REPO / "examples" / "model.yaml").read_text())


class RecordingWriter(Writer):
    """Records what the reconciler would write; writes nothing."""

    def __init__(self) -> None:
        super().__init__(api=None)  # type: ignore[arg-type]
        self.children: list = []
        self.statuses: list = []
        self.events: list = []

    def execute_one(self, action, namespace, result=None):
        self.children.append(action)
        raise AssertionError(f"the reconciler wrote {action.verb} {action.kind} for a refused spec")

    def apply_status(self, namespace, name, status, manager=None):
        self.statuses.append(status)
        return {}

    def post_event(self, fm, event_type, reason, message, now=None):
        self.events.append((event_type, reason, message))


class NoDiscovery:
    def served_groups(self) -> frozenset[str]:
        return frozenset()


def body_with(**engine) -> dict:
    body = copy.deepcopy(EXAMPLE)
    body["metadata"].update(namespace="models", uid="00000000-0000-4000-8000-000000000002", generation=3)
    body["spec"].setdefault("engine", {}).update(engine)
    return body


@pytest.mark.parametrize(("engine", "named"), [
    ({"extraArgs": ["--api_key=hunter2"]}, "--api-key is refused"),
    ({"extraArgs": ["--served-model-na=other"]}, "--served-model-name, which is refused"),
    ({"extraArgs": ["--allowed-local-media-path", "/"]}, "--allowed-local-media-path is refused"),
    ({"extraArgs": ["--trust-remote-code"]}, "spec.model.trustRemoteCode is false"),
    ({"env": [{"name": "VLLM_SERVER_DEV_MODE", "value": "1"}]}, "VLLM_SERVER_DEV_MODE is refused"),
])
def test_the_reconciler_refuses_what_an_older_crd_let_through(engine, named):
    writer = RecordingWriter()
    context = OperatorContext(config=load_config({}), writer=writer, discovery=NoDiscovery(),  # type: ignore[arg-type]
                              metrics=OperatorMetrics())
    body = body_with(**engine)
    ref = ("models", body["metadata"]["name"])
    try:
        outcome = asyncio.run(reconcile(context, ref, {observe.MODELS_INDEX: {ref: [body]}}))
        context.executor.shutdown(wait=True)
    finally:
        context.shutdown()
    assert writer.children == [] and (outcome.plan is None or outcome.plan.empty)
    conditions = {c["type"]: c for c in outcome.status["conditions"]}
    degraded = conditions["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidSpec"
    assert named in degraded["message"]
    assert conditions["Ready"]["status"] == "False"
    assert writer.statuses and any(e[:2] == ("Warning", "InvalidSpec") for e in writer.events)
