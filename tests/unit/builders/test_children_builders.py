"""Service, PDB, NetworkPolicy, PVC, monitors, Route, names and build_children."""

from __future__ import annotations

import re

import pytest

from fm_cases import ALL_APIS, CASES, TEST_NAMESPACE, TEST_UID, load_fm, with_spec
from kiban.builders import (
    build_cache_pvc,
    build_children,
    build_network_policy,
    build_pdb,
    build_pod_monitor,
    build_route,
    build_service,
    endpoint_url,
    selector_string,
)
from kiban.builders.common import spec_hash, stamped_spec_hash
from kiban.builders.names import cache_claim_name, dns_label, label_value, workload_name
from kiban.config import load_config
from kiban.reconcile.plan import is_owned_by

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def kinds(objects):
    return [o["kind"] for o in objects]


def test_children_of_the_minimal_example(minimal, config):
    assert kinds(build_children(minimal, config)) == ["Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_child_is_built_owned_and_spec_hashed(case, config):
    """What a builder returns is what the reconciler applies: it must carry both marks plan()
    requires before it touches a child, the model's namespace, and its own spec hash."""
    for child in build_children(load_fm(CASES[case]), config, available_apis=ALL_APIS):
        assert is_owned_by(child, TEST_UID), child["kind"]
        assert child["metadata"]["namespace"] == TEST_NAMESPACE
        assert stamped_spec_hash(child) == spec_hash(child), child["kind"]


def test_optional_apis_add_monitor_and_route_only_when_served(full, config):
    assert kinds(build_children(full, config)) == [
        "PersistentVolumeClaim", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
    ]
    assert kinds(build_children(full, config, available_apis=ALL_APIS))[-3:] == ["PodMonitor", "Route", "InferencePool"]


def test_route_needs_the_spec_to_ask(minimal, config):
    assert build_route(minimal) is None
    assert "Route" not in kinds(build_children(minimal, config, available_apis=ALL_APIS))


def test_network_policy_can_be_turned_off(minimal, config):
    fm = with_spec(minimal, **{"exposure.networkPolicy": False})
    assert "NetworkPolicy" not in kinds(build_children(fm, config))


def test_every_child_is_owned_namespaced_and_hashed(full, config):
    for obj in build_children(full, config, available_apis=ALL_APIS):
        meta = obj["metadata"]
        assert meta["namespace"] == "models"
        assert meta["ownerReferences"][0]["kind"] == "FoundationModel"
        assert meta["ownerReferences"][0]["controller"] is True
        assert re.fullmatch(r"[0-9a-f]{16}", meta["annotations"]["kiban.dev/spec-hash"])


def test_service_exposes_port_8000_named_http(minimal, full):
    service = build_service(minimal)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0] == {
        "name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP", "appProtocol": "http",
    }
    assert service["spec"]["selector"] == {"kiban.dev/model": "llama-8b", "app.kubernetes.io/component": "model-server"}
    assert build_service(with_spec(minimal, **{"exposure.serviceType": "LoadBalancer"}))["spec"]["type"] == "LoadBalancer"


def test_endpoint_and_selector_string(minimal):
    assert endpoint_url("llama-8b", "models") == "http://llama-8b.models.svc:8000/v1"
    assert selector_string(minimal) == "app.kubernetes.io/component=model-server,kiban.dev/model=llama-8b"


def test_pdb_allows_one_disruption(minimal):
    spec = build_pdb(minimal)["spec"]
    assert spec["maxUnavailable"] == 1
    assert spec["selector"]["matchLabels"]["kiban.dev/model"] == "llama-8b"


def test_network_policy_admits_namespace_and_monitoring_only(minimal, config):
    spec = build_network_policy(minimal, config)["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert rule["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]


def test_network_policy_follows_exposure(full):
    config = load_config({"KIBAN_MONITORING_NAMESPACE": "openshift-user-workload-monitoring"})
    rules = build_network_policy(full, config)["spec"]["ingress"]
    peers = rules[0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"team": "research"}}} in peers
    assert {"namespaceSelector": {"matchLabels": {"network.openshift.io/policy-group": "ingress"}}} in peers
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openshift-user-workload-monitoring"}}
    } in peers
    assert len(rules) == 1  # ClusterIP: no rule for outside traffic
    balanced = with_spec(full, **{"exposure.serviceType": "LoadBalancer", "apiKeySecretRef": None})
    rules = build_network_policy(balanced, config)["spec"]["ingress"]
    assert rules[1] == {"ports": [{"protocol": "TCP", "port": 8000}]}  # LoadBalancer: outside traffic


def test_cache_pvc_only_for_pvc_caches(minimal, full):
    assert build_cache_pvc(minimal) is None
    claim = build_cache_pvc(full)
    assert claim["metadata"]["name"] == "full-cache"
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "fast-rwx"


def test_pod_monitor_scrapes_metrics_with_configured_labels(minimal):
    monitor = build_pod_monitor(minimal, load_config({"KIBAN_MONITOR_LABELS": "release=prometheus"}))
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s", "scheme": "http"}
    ]


def test_route_is_edge_tls_and_forwards_only_v1(full):
    route = build_route(full)
    assert route["apiVersion"] == "route.openshift.io/v1"
    assert route["spec"]["tls"] == {"termination": "edge", "insecureEdgeTerminationPolicy": "Redirect"}
    assert route["spec"]["path"] == "/v1"
    assert route["spec"]["host"] == "mixtral.apps.example.com"
    assert route["spec"]["to"]["name"] == "full"


@pytest.mark.parametrize(
    "name",
    ["llama-8b", "a" * 253, "llama.3.1-8b", "8b-model", "x" * 60 + ".y", "m"],
)
def test_names_are_valid_dns_labels_and_label_values(name):
    for child in (workload_name(name), cache_claim_name(name)):
        assert len(child) <= 63 and DNS_1035.match(child), child
    assert len(label_value(name)) <= 63 and LABEL_VALUE.match(label_value(name))


def test_valid_names_are_kept_and_changed_names_do_not_collide():
    assert workload_name("llama-8b") == "llama-8b"
    assert cache_claim_name("llama-8b") == "llama-8b-cache"
    assert workload_name("a.b") != workload_name("a-b")
    long_a, long_b = "x" * 70 + "a", "x" * 70 + "b"
    assert dns_label(long_a) != dns_label(long_b)
    assert label_value(long_a) != label_value(long_b)
    assert workload_name("a" * 100) == workload_name("a" * 100)
