"""Inputs for the builder tests: the examples and the full-featured fixture, as FoundationModels."""

from __future__ import annotations

from pathlib import Path

import yaml

from kiban.api.v1alpha1 import FoundationModel

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
FULL_FEATURED = Path(__file__).with_name("full-featured.yaml")
CASES = {p.stem: p for p in [*EXAMPLES, FULL_FEATURED]}
TEST_NAMESPACE = "models"
TEST_UID = "00000000-0000-4000-8000-000000000001"
ALL_APIS = frozenset({"monitoring.coreos.com/v1", "route.openshift.io/v1", "inference.networking.k8s.io/v1",
                      "leaderworkerset.x-k8s.io/v1"})


def load_fm(path: Path, *, namespace: str = TEST_NAMESPACE) -> FoundationModel:
    """A FoundationModel from a YAML file, placed in a namespace with a uid as the API server would."""
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    body["metadata"] = {**body["metadata"], "namespace": namespace, "uid": TEST_UID}
    return FoundationModel.from_object(body)


def with_spec(fm: FoundationModel, **changes) -> FoundationModel:
    """A copy of fm with spec fields replaced, validated again (so CEL-rule checks still run)."""
    spec = fm.spec.model_dump(mode="json", exclude_none=True)
    for dotted, value in changes.items():
        node = spec
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    body = fm.model_dump(mode="json", exclude_none=True)
    return FoundationModel.from_object({**body, "spec": spec})
