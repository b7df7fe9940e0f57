"""A model bigger than a node: one LeaderWorkerSet group per replica, leader serving, workers headless."""

from __future__ import annotations

import re

import pytest

from fm_cases import ALL_APIS, REPO, load_fm, with_spec
from kiban.builders import build_children, build_deployment
from kiban.builders.leaderworkerset import LWS_KIND, ROLE_LABEL, build_leader_worker_set
from kiban.builders.names import GROUP_SET_MAX, group_set_name, workload_name
from kiban.config import load_config
from kiban.sizing.gpu import resolve_sizing
from test_deployment_builder import known_flags

MULTINODE = REPO / "examples" / "llama-405b-multinode.yaml"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture
def big():
    return load_fm(MULTINODE)


def group_set(fm, config=None, **kwargs):
    config = config or load_config({})
    sizing = resolve_sizing(fm.spec, config.profile(fm.spec.accelerator.profile))
    return build_leader_worker_set(fm, config, sizing, **kwargs)


def templates(lws):
    tpl = lws["spec"]["leaderWorkerTemplate"]
    return tpl["leaderTemplate"], tpl["workerTemplate"]


def only_container(template):
    (container,) = template["spec"]["containers"]
    return container


def flag_value(args, flag):
    return args[args.index(flag) + 1]


def test_405b_on_h100_is_one_group_of_two_pods_instead_of_a_deployment(big, config):
    kinds = [c["kind"] for c in build_children(big, config, available_apis=ALL_APIS)]
    assert "Deployment" not in kinds and kinds.count(LWS_KIND) == 1
    lws = group_set(big)
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert lws["spec"]["replicas"] == 1  # minReplicas, as for a Deployment
    assert group_set(big, replicas=2)["spec"]["replicas"] == 2


def test_a_model_that_fits_one_node_keeps_its_deployment(config):
    fm = load_fm(REPO / "examples" / "llama-70b-h100.yaml")
    kinds = [c["kind"] for c in build_children(fm, config, available_apis=ALL_APIS)]
    assert "Deployment" in kinds and LWS_KIND not in kinds


@pytest.mark.parametrize("role", [0, 1], ids=["leader", "worker"])
def test_every_flag_of_leader_and_worker_exists_in_vllm_0_33(big, role):
    flags = known_flags()
    args = only_container(templates(group_set(big))[role])["args"]
    emitted = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert {"--nnodes", "--node-rank", "--master-addr", "--master-port"} <= emitted
    assert sorted(emitted - flags) == []


def test_leader_is_rank_zero_and_serves_the_api_workers_are_headless_with_their_rank(big):
    leader, worker = (only_container(t) for t in templates(group_set(big)))
    for container in (leader, worker):
        args = container["args"]
        assert flag_value(args, "--nnodes") == "2"
        assert flag_value(args, "--master-addr") == "$(LWS_LEADER_ADDRESS)"
        assert flag_value(args, "--tensor-parallel-size") == "8"
        assert flag_value(args, "--pipeline-parallel-size") == "2"
        # vLLM's own check (arg_utils.py): --nnodes divides the world size TP x PP
        assert (8 * 2) % int(flag_value(args, "--nnodes")) == 0
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"  # the whole node
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert flag_value(leader["args"], "--node-rank") == "0" and "--headless" not in leader["args"]
    assert flag_value(worker["args"], "--node-rank") == "$(LWS_WORKER_INDEX)" and "--headless" in worker["args"]
    assert flag_value(leader["args"], "--master-port") == flag_value(worker["args"], "--master-port")
    assert leader["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert leader["readinessProbe"]["httpGet"]["path"] == "/health" and "startupProbe" in leader
    assert not {"ports", "readinessProbe", "livenessProbe", "startupProbe"} & set(worker)


def test_api_key_only_on_the_leader_credentials_and_cache_on_both(big):
    leader, worker = (only_container(t) for t in templates(group_set(big)))
    names = lambda c: {e["name"] for e in c["env"]}  # noqa: E731
    assert "VLLM_API_KEY" in names(leader) and "VLLM_API_KEY" not in names(worker)
    assert not any("llama-405b-api-key" in a for a in leader["args"] + worker["args"])  # never in args
    for container in (leader, worker):
        assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/cache", "/tmp", "/dev/shm"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_pods_match_the_single_node_pod_apart_from_placement_and_container(big, config):
    """Same tolerations, node selector, security context and volumes as a Deployment's pod."""
    sizing = resolve_sizing(big.spec, config.profile("nvidia-h100-80gb"))
    single = build_deployment(big, config, sizing)["spec"]["template"]["spec"]
    for template in templates(group_set(big)):
        pod = template["spec"]
        assert {k: v for k, v in pod.items() if k not in ("affinity", "containers")} == \
               {k: v for k, v in single.items() if k not in ("affinity", "containers")}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_one_pod_of_the_model_per_node_and_the_users_affinity_is_kept(big):
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
    fm = with_spec(big, **{"scheduling.affinity": affinity})
    for template in templates(group_set(fm)):
        placed = template["spec"]["affinity"]
        assert placed["nodeAffinity"] == affinity["nodeAffinity"]
        (term,) = placed["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == {
            "kiban.dev/model": "llama-405b", "app.kubernetes.io/component": "model-server"}
    # not mutated (affinity is typed: compare it as the user wrote it)
    assert fm.spec.scheduling.affinity.model_dump(mode="json", by_alias=True, exclude_defaults=True) == affinity


def test_templates_carry_the_model_labels_and_a_role(big):
    leader, worker = templates(group_set(big))
    assert leader["metadata"]["labels"][ROLE_LABEL] == "leader"
    assert worker["metadata"]["labels"][ROLE_LABEL] == "worker"
    for template in (leader, worker):
        labels = template["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "kiban" and labels["app.kubernetes.io/instance"] == "llama-405b"


def test_service_selects_only_leaders_and_the_policy_lets_the_ranks_talk(big, config):
    children = {c["kind"]: c for c in build_children(big, config, available_apis=ALL_APIS)}
    assert children["Service"]["spec"]["selector"][ROLE_LABEL] == "leader"
    # a cluster's own inference gateway routes to the InferencePool: leaders only, like the Service
    assert children["InferencePool"]["spec"]["selector"]["matchLabels"] == children["Service"]["spec"]["selector"]
    rules = children["NetworkPolicy"]["spec"]["ingress"]
    assert rules[0]["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert {"from": [{"podSelector": {"matchLabels": {
        "kiban.dev/model": "llama-405b", "app.kubernetes.io/component": "model-server"}}}]} in rules
    # the PDB and the PodMonitor select every pod of the model (workers expose no port to scrape)
    assert ROLE_LABEL not in children["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]


def test_restart_and_startup_policies(big):
    spec = group_set(big)["spec"]
    assert spec["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert spec["startupPolicy"] == "LeaderCreated"
    assert spec["networkConfig"] == {"subdomainPolicy": "Shared"}


@pytest.mark.parametrize(
    ("rollout", "replicas", "expected"),
    [
        ({}, 2, {"maxSurge": 1, "maxUnavailable": 0}),  # one group at a time, none down
        ({"maxSurge": 0, "maxUnavailable": 1}, 2, {"maxSurge": 0, "maxUnavailable": 1}),
        ({"maxSurge": 0, "maxUnavailable": 1}, 1, {"maxSurge": 1, "maxUnavailable": 0}),  # at minReplicas
    ],
)
def test_rollout_goes_group_by_group_never_below_min_replicas(big, rollout, replicas, expected):
    fm = with_spec(big, rollout=rollout)
    config = group_set(fm, replicas=replicas)["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]
    assert {k: config[k] for k in expected} == expected and config["partition"] == 0


@pytest.mark.parametrize("name", ["llama-405b", "a" * 253, "llama.3.1-405b", "405b", "x" * 60 + ".y"])
def test_group_set_name_leaves_room_for_pod_and_revision_names(name):
    lws = group_set_name(name)
    assert DNS_1035.match(lws) and len(lws) <= GROUP_SET_MAX
    assert lws != workload_name(name)  # LWS's own headless Service must not take the model's Service name
    # the longest name LWS derives: pod <lws>-<group>-<rank>, revision label <lws>-<group>-<10 chars>
    assert len(f"{lws}-9999-{'x' * 10}") <= 63
