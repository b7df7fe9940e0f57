"""NetworkPolicy: who may reach the engine's port 8000.

vLLM's --api-key guards only /v1 (and /v2, /inference); /metrics and /invocations are open on the
same port, and a NetworkPolicy cannot filter by path. So the port is opened only to:
- pods in the FoundationModel's own namespace;
- namespaces carrying all of spec.exposure.allowedNamespaceLabels (when given);
- the operator's monitoring namespace (config.monitoring_namespace), for Prometheus to scrape /metrics;
- with spec.exposure.route, the OpenShift router (namespaces labelled
  network.openshift.io/policy-group=ingress); the Route itself forwards only /v1;
- with serviceType NodePort or LoadBalancer, any source: the user asked for outside traffic;
- for a multi-node model, every port from the model's own pods (the group's ranks reach each
  other on the master port and NCCL's own ports), nothing more from anyone else.
"""

from __future__ import annotations

from typing import Any

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.common import object_meta, with_spec_hash
from kiban.builders.deployment import HTTP_PORT
from kiban.builders.labels import selector_labels
from kiban.builders.names import workload_name
from kiban.config import OperatorConfig

OPENSHIFT_INGRESS_LABELS = {"network.openshift.io/policy-group": "ingress"}


def _namespaces(labels: dict[str, str]) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": labels}}


def build_network_policy(fm: FoundationModel, config: OperatorConfig, *, between_pods: bool = False) -> dict[str, Any]:
    """between_pods: also admit every port from the model's own pods (a multi-node group's ranks
    talk torch.distributed and NCCL on ports of their own choosing)."""
    exposure = fm.spec.exposure
    peers: list[dict[str, Any]] = [{"podSelector": {}}]
    if exposure.allowed_namespace_labels:
        peers.append(_namespaces(dict(exposure.allowed_namespace_labels)))
    peers.append(_namespaces({"kubernetes.io/metadata.name": config.monitoring_namespace}))
    if exposure.route:
        peers.append(_namespaces(OPENSHIFT_INGRESS_LABELS))
    port = [{"protocol": "TCP", "port": HTTP_PORT}]
    rules: list[dict[str, Any]] = [{"from": peers, "ports": port}]
    if exposure.service_type != "ClusterIP":
        rules.append({"ports": port})
    if between_pods:
        rules.append({"from": [{"podSelector": {"matchLabels": selector_labels(fm)}}]})
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(fm, workload_name(fm.name)),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(fm)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }
    return with_spec_hash(policy)
