"""InferencePool (inference.networking.k8s.io/v1, the Gateway API Inference Extension), built only
where that API is served and spec.exposure.inferencePool is not false.

A cluster that runs its own inference gateway (an Envoy- or Istio-based Gateway with an endpoint
picker, llm-d, ...) routes an HTTPRoute to an InferencePool: the pool names the pods (the
engine pods' selector labels) and their port. No endpointPickerRef: which picker serves the
pool is the cluster's gateway configuration, not the model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.common import object_meta, with_spec_hash
from kiban.builders.deployment import HTTP_PORT
from kiban.builders.labels import selector_labels
from kiban.builders.names import workload_name

INFERENCE_POOL_API_VERSION = "inference.networking.k8s.io/v1"


def wants_inference_pool(fm: FoundationModel) -> bool:
    """Opt-out field: unset means yes (wherever the API is served)."""
    return fm.spec.exposure.inference_pool is not False


def build_inference_pool(fm: FoundationModel, selector: Mapping[str, str] | None = None) -> dict[str, Any]:
    """selector: the pods that serve the API when not all of them do (a multi-node model's leaders)."""
    pool = {
        "apiVersion": INFERENCE_POOL_API_VERSION,
        "kind": "InferencePool",
        "metadata": object_meta(fm, workload_name(fm.name)),
        "spec": {
            "selector": {"matchLabels": dict(selector) if selector is not None else selector_labels(fm)},
            "targetPorts": [{"number": HTTP_PORT}],
            "appProtocol": "http",
        },
    }
    return with_spec_hash(pool)
