"""The LeaderWorkerSet controller's settings outside a cluster (pure parts of kiban_dev.devcluster.leaderworkerset)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from kiban_dev.devcluster.leaderworkerset import (
    LeaderWorkerSetError,
    controller_config,
    probe_object,
    webhook_configurations,
)

# the shape controller-gen writes into config/webhook/manifests.yaml (one hook of each kind)
MANIFESTS = """
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: mutating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset}
  failurePolicy: Fail
  name: mleaderworkerset.kb.io
  rules:
  - {apiGroups: [leaderworkerset.x-k8s.io], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [leaderworkersets]}
  sideEffects: None
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}
  failurePolicy: Fail
  name: mpod.kb.io
  rules:
  - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  sideEffects: None
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: validating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /validate--v1-pod}
  failurePolicy: Fail
  name: vpod.kb.io
  rules:
  - {apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [pods]}
  sideEffects: None
"""


def test_config_turns_off_cert_management_and_leader_election_and_binds_loopback():
    config = controller_config(9443, 8081, Path("/certs"))
    assert config["apiVersion"] == "config.lws.x-k8s.io/v1alpha1" and config["kind"] == "Configuration"
    assert config["internalCertManagement"] == {"enable": False}
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["webhook"] == {"host": "127.0.0.1", "port": 9443, "certDir": "/certs"}
    assert config["metrics"] == {"bindAddress": "0"}
    assert config["health"] == {"healthProbeBindAddress": "127.0.0.1:8081"}


def test_webhooks_point_at_loopback_with_the_cluster_ca_and_pod_hooks_only_see_lws_pods():
    mutating, validating = webhook_configurations(MANIFESTS, 31000, b"PEM")
    assert (mutating["kind"], mutating["metadata"]["name"]) == (
        "MutatingWebhookConfiguration", "lws-mutating-webhook-configuration")
    assert validating["metadata"]["name"] == "lws-validating-webhook-configuration"
    hooks = {h["name"]: h for h in mutating["webhooks"] + validating["webhooks"]}
    assert hooks["mpod.kb.io"]["clientConfig"] == {
        "url": "https://127.0.0.1:31000/mutate--v1-pod", "caBundle": base64.b64encode(b"PEM").decode()}
    selector = {"matchExpressions": [{"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]}
    assert hooks["mpod.kb.io"]["objectSelector"] == selector and hooks["vpod.kb.io"]["objectSelector"] == selector
    assert "objectSelector" not in hooks["mleaderworkerset.kb.io"]  # every LeaderWorkerSet is LWS's
    assert all(h["failurePolicy"] == "Fail" for h in hooks.values())


def test_an_unexpected_manifest_is_refused():
    with pytest.raises(LeaderWorkerSetError, match="Service"):
        webhook_configurations("kind: Service\nmetadata: {name: x}\n", 1, b"")


def test_probe_is_a_minimal_group_of_two():
    probe = probe_object()
    assert probe["spec"]["leaderWorkerTemplate"]["size"] == 2 and probe["metadata"]["namespace"] == "default"
