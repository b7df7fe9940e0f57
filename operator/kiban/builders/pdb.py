"""PodDisruptionBudget: node drains evict at most one engine pod at a time."""

from __future__ import annotations

from typing import Any

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.common import object_meta, with_spec_hash
from kiban.builders.labels import selector_labels
from kiban.builders.names import workload_name


def build_pdb(fm: FoundationModel) -> dict[str, Any]:
    """maxUnavailable 1; pods still loading (never Ready) may always be evicted, so they cannot block a drain."""
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(fm, workload_name(fm.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(fm)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
    return with_spec_hash(pdb)
