"""NetworkPolicy: who may reach the engine's port 8000.

vLLM's --api-key guards only /v1 (and /v2, /inference); /metrics and /invocations are open on the
same port, and a NetworkPolicy cannot filter by path.

Through the Kiban gateway (spec.exposure.through_gateway), the port is opened to two peers only:
- the gateway's pods (config.gateway_namespace, matched by name, and config.gateway_pod_labels),
  which check the key on every path and forward only the /v1 inference paths;
- the operator's monitoring namespace, for Prometheus to scrape /metrics. The scraper could call
  any path, /invocations included: accepted, because it is the cluster's own monitoring stack,
  which already reads every workload's metrics, and scraping needs the pod's port itself.

Otherwise (the plain Service), the port is opened only to:
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


def gateway_peer(config: OperatorConfig) -> dict[str, Any]:
    """The gateway's pods: both selectors in one peer, so both must match (namespace AND labels)."""
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": config.gateway_namespace}},
        "podSelector": {"matchLabels": dict(config.gateway_pod_labels)},
    }


def build_network_policy(fm: FoundationModel, config: OperatorConfig, *, between_pods: bool = False) -> dict[str, Any]:
    """between_pods: also admit every port from the model's own pods (a multi-node group's ranks
    talk torch.distributed and NCCL on ports of their own choosing)."""
    exposure = fm.spec.exposure
    monitoring = _namespaces({"kubernetes.io/metadata.name": config.monitoring_namespace})
    port = [{"protocol": "TCP", "port": HTTP_PORT}]
    if exposure.through_gateway(config.gateway_default):
        rules: list[dict[str, Any]] = [{"from": [gateway_peer(config), monitoring], "ports": port}]
    else:
        peers: list[dict[str, Any]] = [{"podSelector": {}}]
        if exposure.allowed_namespace_labels:
            peers.append(_namespaces(dict(exposure.allowed_namespace_labels)))
        peers.append(monitoring)
        if exposure.route:
            peers.append(_namespaces(OPENSHIFT_INGRESS_LABELS))
        rules = [{"from": peers, "ports": port}]
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
