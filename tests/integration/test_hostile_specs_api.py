"""Hostile and invalid FoundationModels are refused by the real API server at `kubectl apply`,
naming the field and the flag; what the CRD accepts, the Deployment API accepts too.

Each refused case was accepted by the CRD before (on 79bb977: 152 of 479 accepted hostile specs
never got a Deployment, and extraArgs/env could override the operator or open the engine up).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders import build_children
from kiban.config import load_config
from kiban.sizing.gpu import resolve_sizing
from support import REPO

pytestmark = pytest.mark.integration

BASE = yaml.safe_load((REPO / "examples" / "model.yaml").read_text())


def spec_with(**changes) -> dict:
    body = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = body["spec"]
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return body


def dry_run_create(api, namespace: str, body: dict) -> str | None:
    """The API server's refusal message, or None when it accepts (server-side dry run, strict fields)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "kiban.dev", "v1alpha1", namespace, "foundationmodels", body, dry_run="All", field_validation="Strict")
    except ApiException as exc:
        assert exc.status == 422, exc.body
        return json.loads(exc.body)["message"]
    return None


REFUSED = [
    # engine.extraArgs, read as vLLM reads them
    ("api key, underscore spelling", {"engine.extraArgs": ["--api_key=x"]},
     "spec.engine.extraArgs[0]: Forbidden: '--api_key=x': --api-key is refused"),
    ("api key, argparse prefix", {"engine.extraArgs": ["--enforce-eager", "--api-ke=x"]},
     "spec.engine.extraArgs[1]: Invalid value: \"string\": '--api-ke=x': vLLM would expand this abbreviation to --api-key"),
    ("served name overridden later", {"engine.extraArgs": ["--served_model_name", "gpt-4"]},
     "spec.engine.extraArgs[0]: Forbidden: '--served_model_name': --served-model-name is refused"),
    ("port overridden", {"engine.extraArgs": ["--port=9000"]}, "--port is refused"),
    ("tensor parallel by short alias", {"engine.extraArgs": ["-tp", "8"]}, "-tp (--tensor-parallel-size) is refused"),
    ("quantization attached to -q", {"engine.extraArgs": ["-qawq"]}, "vLLM reads it as -q with the rest as its value"),
    ("lora wiring", {"engine.extraArgs": ["--lora-modules", "x=/tmp/x"]}, "--lora-modules is refused"),
    ("download dir", {"engine.extraArgs": ["--download-dir=/tmp"]}, "--download-dir is refused"),
    ("trust remote code without the field", {"engine.extraArgs": ["--trust-remote-code"]},
     "spec.engine.extraArgs: Forbidden: spec.engine.extraArgs: --trust-remote-code is refused while spec.model.trustRemoteCode is false"),
    ("local media path", {"engine.extraArgs": ["--allowed-local-media-path", "/"]},
     "--allowed-local-media-path is refused: it lets API clients read the pod's files"),
    ("code from a file", {"engine.extraArgs": ["--tool-parser-plugin=/models/m/evil.py"]}, "--tool-parser-plugin is refused"),
    ("options from a file", {"engine.extraArgs": ["--config", "/models/m/a.yaml"]}, "--config is refused"),
    ("unknown flag", {"engine.extraArgs": ["--enable-turbo-mode"]}, "not an option of vllm serve 0.33.0"),
    ("stray value", {"engine.extraArgs": ["--enforce-eager", "true"]},
     "spec.engine.extraArgs: Invalid value: \"array\": 'true': each option needs the values it takes"),
    ("switch with a value", {"engine.extraArgs": ["--enforce-eager=false"]}, "'--enforce-eager=false': each option needs"),
    # engine.env
    ("dev mode", {"engine.env": [{"name": "VLLM_SERVER_DEV_MODE", "value": "1"}]},
     "spec.engine.env[0].name: Forbidden: VLLM_SERVER_DEV_MODE is refused: it serves vLLM's development routes"),
    ("api key env", {"engine.env": [{"name": "VLLM_API_KEY", "value": "x"}]}, "VLLM_API_KEY is refused"),
    ("cache home", {"engine.env": [{"name": "HF_HOME", "value": "/etc"}]}, "HF_HOME is refused"),
    ("preload", {"engine.env": [{"name": "LD_PRELOAD", "value": "/models/m/x.so"}]}, "LD_PRELOAD is refused"),
    ("every GPU of the node", {"engine.env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]},
     "NVIDIA_VISIBLE_DEVICES is refused"),
    ("literal credential", {"engine.env": [{"name": "HF_TOKEN", "value": "hf_x"}]},
     "spec.engine.env[0].value: Forbidden: HF_TOKEN is a credential"),
    # what the Deployment API would refuse
    ("env name the Pod API refuses", {"engine.env": [{"name": "..x", "value": "1"}]}, "spec.engine.env[0].name"),
    ("secret name", {"engine.env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "Bad_Name", "key": "k"}}}]},
     "spec.engine.env[0].valueFrom.secretKeyRef.name"),
    ("secret key", {"engine.env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a/b"}}}]},
     "spec.engine.env[0].valueFrom.secretKeyRef.key"),
    ("resource name", {"engine.resources": {"requests": {"gpus": "1"}}}, "spec.engine.resources"),
    ("requests above limits", {"engine.resources": {"requests": {"memory": "64Gi"}, "limits": {"memory": "32Gi"}}},
     "spec.engine.resources.requests"),
    ("extended resource without its limit", {"engine.resources": {"requests": {"example.com/fpga": "1"}}},
     "spec.engine.resources.requests"),
    ("toleration Exists with a value", {"scheduling.tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
     "spec.scheduling.tolerations[0].value"),
    ("toleration without key must be Exists", {"scheduling.tolerations": [{"operator": "Equal", "value": "v"}]},
     "spec.scheduling.tolerations[0].operator"),
    ("tolerationSeconds without NoExecute", {"scheduling.tolerations": [{"key": "k", "tolerationSeconds": 5}]},
     "spec.scheduling.tolerations[0].effect"),
    ("taint key", {"scheduling.tolerations": [{"key": "a b", "operator": "Exists"}]}, "spec.scheduling.tolerations[0].key"),
    ("node selector key", {"scheduling.nodeSelector": {"-bad": "x"}}, "spec.scheduling.nodeSelector"),
    ("node selector value", {"scheduling.nodeSelector": {"zone": "a b"}}, "spec.scheduling.nodeSelector.zone"),
    ("affinity not an Affinity", {"scheduling.affinity": {"nodeAffinity": "x"}}, "spec.scheduling.affinity.nodeAffinity"),
    ("affinity In without values", {"scheduling.affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In"}]}]}}}},
     "matchExpressions[0].values"),
    ("priority class name", {"scheduling.priorityClassName": "High_Prio"}, "spec.scheduling.priorityClassName"),
    ("system priority class", {"scheduling.priorityClassName": "system-node-critical"}, "system-* priority classes are refused"),
    ("image with a space", {"engine.image": "vllm/vllm-openai :v0.33.0"}, "spec.engine.image"),
    ("storage class", {"cache": {"type": "pvc", "size": "10Gi", "storageClassName": "Fast_SSD"}}, "spec.cache.storageClassName"),
    ("empty cache", {"cache": {"type": "pvc", "size": "0"}}, "spec.cache.size"),
    ("namespace label key", {"exposure.allowedNamespaceLabels": {"team/x/y": "a"}}, "spec.exposure.allowedNamespaceLabels"),
    ("route host", {"exposure": {"route": True, "routeHost": "Mixtral_Apps"}}, "spec.exposure.routeHost"),
    ("revision starting with a dash", {"model.revision": "--trust-remote-code"}, "spec.model.revision"),
    # paths and volumes
    ("model path leaves the volume", {"model.uri": "pvc://claim/../../../etc"}, "spec.model.uri: Invalid value"),
    ("adapter path leaves the volume", {"adapters": [{"name": "a", "uri": "pvc://claim/loras/../../etc"}]},
     "spec.adapters[0].uri"),
    ("adapter path vLLM cannot parse", {"adapters": [{"name": "a", "uri": "pvc://claim/a=b"}]}, "spec.adapters[0].uri"),
    ("hf repo dot-dot", {"model.uri": "hf://org/.."}, "spec.model.uri"),
    ("single-attach cache with several replicas", {"cache": {"type": "pvc", "size": "10Gi", "accessMode": "ReadWriteOnce"}},
     "spec.cache.accessMode: Invalid value"),
    ("single-pod cache with several replicas", {"cache": {"type": "pvc", "size": "10Gi", "accessMode": "ReadWriteOncePod"}},
     "maxReplicas must be 1"),
]


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_by_the_api_server_naming_the_field(kube_api, namespace, crds, changes, expected):
    body = spec_with(**changes)
    message = dry_run_create(kube_api, namespace, body)
    assert message is not None, "the API server accepted it"
    assert expected in message, message
    # and the operator's own parse refuses it too (an object stored under an older CRD)
    with pytest.raises(ValueError):
        FoundationModel.from_object(body)


ACCEPTED = [
    ("tuning flags", {"engine.extraArgs": ["--enable-prefix-caching", "--kv-cache-dtype", "fp8",
                                           "--max_num_batched_tokens=8192", "--compilation-config.level", "3",
                                           "--cudagraph-capture-sizes", "1", "2", "4", "--seed=-1", "-O3"]}),
    ("trust remote code with the field", {"model.trustRemoteCode": True, "engine.extraArgs": ["--trust-remote-code"]}),
    ("millicores and memory", {"engine.resources": {"requests": {"cpu": "500m", "memory": "1.5Gi"},
                                                    "limits": {"cpu": "2", "memory": "2Gi", "example.com/nic": "1"}}}),
    ("typed affinity", {"scheduling.affinity": {
        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}}]},
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"kiban.dev/model": "x"}}}]}}}),
    ("tolerations", {"scheduling.tolerations": [{"operator": "Exists"},
                                                {"key": "k", "effect": "NoExecute", "tolerationSeconds": 30}]}),
    ("single-attach cache with one replica", {"cache": {"type": "pvc", "size": "10Gi", "accessMode": "ReadWriteOnce"},
                                              "scaling.minReplicas": 1, "scaling.maxReplicas": 1}),
    ("credential from a Secret", {"engine.env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]}),
]


@pytest.mark.parametrize("changes", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted_specs_build_children_the_api_server_accepts(kube_api, namespace, crds, changes):
    """The other half of parity: what the CRD accepts builds a Deployment (and the rest) that the
    API server accepts too (server-side dry run of every child)."""
    from kubernetes import dynamic
    from kubernetes.client.exceptions import ApiException

    body = spec_with(**changes)
    assert dry_run_create(kube_api, namespace, body) is None
    body["metadata"] = {**body["metadata"], "namespace": namespace, "uid": "00000000-0000-4000-8000-000000000003"}
    fm = FoundationModel.from_object(body)
    config = load_config({})
    children = build_children(fm, config, sizing=resolve_sizing(fm.spec, config.profile(fm.spec.accelerator.profile)))
    dyn = dynamic.DynamicClient(kube_api)
    for child in children:
        resource = dyn.resources.get(api_version=child["apiVersion"], kind=child["kind"])
        child = {**child, "metadata": {k: v for k, v in child["metadata"].items() if k != "ownerReferences"}}
        try:
            resource.create(body=child, namespace=namespace, query_params=[("dryRun", "All"), ("fieldValidation", "Strict")])
        except ApiException as exc:
            pytest.fail(f"{child['kind']} refused: {exc.body}")
