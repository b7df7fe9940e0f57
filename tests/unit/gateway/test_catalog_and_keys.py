"""What the gateway serves (from FoundationModels and pods), and how it checks keys."""

from __future__ import annotations

import base64
import copy

import pytest
import yaml

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.deployment import build_deployment
from kiban.config import load_config
from kiban.gateway.auth import SecretKeyError, bearer_token, digest, digest_from_secret, key_matches
from kiban.gateway.catalog import Catalog, exposed_through_gateway, lora_names, model_entry, pod_endpoint
from kiban.sizing.gpu import resolve_sizing
from fm_bodies import REPO, fm_body


def engine_pod(body: dict, ip: str | None = "127.64.0.9", ready: bool = True) -> dict:
    """A pod as its ReplicaSet would create it from the operator's own Deployment builder."""
    fm = FoundationModel.from_object(body)
    config = load_config({})
    deployment = build_deployment(fm, config, resolve_sizing(fm.spec, config.profile(fm.spec.accelerator.profile)))
    template = copy.deepcopy(deployment["spec"]["template"])
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": {**template["metadata"], "name": "m-abc", "namespace": body["metadata"]["namespace"]},
            "spec": template["spec"], "status": status}


def test_exposure_is_the_explicit_field_else_the_operators_resolution():
    body = fm_body()
    assert not exposed_through_gateway(body)
    assert exposed_through_gateway({**body, "status": {"resolved": {"gateway": True}}})
    body["spec"]["exposure"] = {"gateway": {"enabled": True}}
    assert exposed_through_gateway(body)
    body["spec"]["exposure"] = {"gateway": {"enabled": False}}
    assert not exposed_through_gateway({**body, "status": {"resolved": {"gateway": True}}})


def test_model_entry_carries_names_policy_limits_and_key():
    body = fm_body(gateway={"enabled": True, "routing": "PrefixAffinity", "maxHeldRequests": 5, "maxHoldSeconds": 9},
                   adapters=[{"name": "legal", "uri": "hf://org/legal"}], apiKeySecretRef={"name": "k"})
    entry = model_entry(body)
    assert entry.served_name == "m" and entry.adapters == {"legal"}
    assert entry.policy.prefix_affinity and entry.max_held == 5 and entry.max_hold_s == 9.0
    assert entry.key_secret == ("k", "api-key")
    assert entry.names() == ("m", "legal")
    assert model_entry(fm_body()) is None  # not through the gateway


def test_ready_pods_become_endpoints_with_their_adapters():
    body = fm_body(gateway={"enabled": True}, adapters=[{"name": "legal", "uri": "hf://org/legal"}])
    endpoint = pod_endpoint(engine_pod(body))
    assert endpoint.address == "127.64.0.9:8000" and endpoint.adapters == {"legal"}
    assert pod_endpoint(engine_pod(body, ready=False)) is None
    assert pod_endpoint(engine_pod(body, ip=None)) is None
    deleting = engine_pod(body)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert pod_endpoint(deleting) is None
    worker = engine_pod(body)
    worker["metadata"]["labels"]["kiban.dev/role"] = "worker"
    assert pod_endpoint(worker) is None  # a multi-node replica's worker serves no API
    headless = engine_pod(body)
    headless["spec"]["containers"][0]["ports"] = []
    assert pod_endpoint(headless) is None


def test_lora_names_read_both_argument_forms():
    assert lora_names(["m", "--lora-modules", "a=/x", "b=/y", "--max-loras", "2"]) == {"a", "b"}
    assert lora_names(["--lora-modules=c=/z"]) == {"c"}
    assert lora_names(["--enable-lora"]) == frozenset()


def test_a_contested_served_name_stays_with_the_oldest_model():
    old = model_entry(fm_body("m", namespace="a", created="2026-01-01T00:00:00Z", gateway={"enabled": True}))
    new = model_entry(fm_body("m", namespace="b", created="2026-02-01T00:00:00Z", gateway={"enabled": True}))
    catalog = Catalog.of([new, old])
    assert catalog.by_name["m"].namespace == "a"
    assert catalog.conflicts == {"m": [("b", "m")]}


def test_bearer_tokens_and_constant_time_match():
    assert bearer_token({"Authorization": "Bearer sk-1"}) == "sk-1"
    assert bearer_token({"Authorization": "bearer  sk-1 "}) == "sk-1"
    assert bearer_token({"Authorization": "Basic abc"}) is None and bearer_token({}) is None
    assert key_matches("sk-1", digest("sk-1")) and not key_matches("sk-2", digest("sk-1"))
    assert not key_matches(None, digest("sk-1")) and not key_matches("sk-1", None)


def test_secret_digest_names_the_problem_never_the_value():
    secret = {"metadata": {"name": "keys"}, "data": {"api-key": base64.b64encode(b"sk-secret").decode()}}
    assert digest_from_secret(secret, "api-key") == digest("sk-secret")
    with pytest.raises(SecretKeyError, match="has no key 'other'") as missing:
        digest_from_secret(secret, "other")
    assert "sk-secret" not in str(missing.value)
    with pytest.raises(SecretKeyError, match="is not base64"):
        digest_from_secret({"metadata": {"name": "k"}, "data": {"api-key": "not base64!"}}, "api-key")


def test_the_example_model_is_not_exposed_until_the_operator_says_so():
    body = yaml.safe_load((REPO / "examples" / "model.yaml").read_text())
    body["metadata"]["namespace"] = "ns"
    assert model_entry(body) is None
    assert model_entry({**body, "status": {"resolved": {"gateway": True}}}).served_name == "llama-8b"
