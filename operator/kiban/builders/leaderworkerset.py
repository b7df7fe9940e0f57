"""The LeaderWorkerSet of a model bigger than a node: one group per replica (pure).

A replica that spans N nodes (sizing.nodes_per_replica > 1) is one LeaderWorkerSet group
(leaderworkerset.x-k8s.io/v1) of size N, one pod per node; the FoundationModel's replicas are
the LeaderWorkerSet's replicas. Decisions:

- vLLM's own multi-node launcher (multiprocessing backend, no Ray): every member runs
  `vllm serve` with the same engine flags plus `--nnodes N --node-rank K --master-addr
  $(LWS_LEADER_ADDRESS) --master-port 29501`; the leader (rank 0) serves the OpenAI API and
  /metrics on port 8000 with the same probes as a Deployment's pod, workers add `--headless`
  and have no port and no probe (they serve nothing; the group is ready when its leader is,
  and the leader is ready only once every worker has joined and the model is loaded). The LWS
  pod webhook injects LWS_LEADER_ADDRESS and LWS_WORKER_INDEX into each container; the
  kubelet expands $(VAR) in args from them.
- Tensor parallel stays within a node, pipeline stages go across nodes (kiban.sizing.layout);
  each pod requests its node's share of the GPUs, and a required pod anti-affinity on
  kubernetes.io/hostname keeps two pods of the model off one node.
- Same pod as a single-node replica otherwise: tolerations, node selector, security context,
  read-only root filesystem, model cache, credentials (workers load weights too). Only the
  leader gets VLLM_API_KEY: it is the only one serving the API.
- restartPolicy RecreateGroupOnPodRestart: an engine cannot survive losing a rank, so a failed
  pod restarts its whole group. startupPolicy LeaderCreated: workers start with the leader,
  which waits for them.
- Rollouts replace whole groups: spec.rollout's maxSurge (default 1) and maxUnavailable
  (default 0, lowered so ready groups never drop below minReplicas) become the LWS rolling
  update's; groups are updated from the highest index down, one step at a time.
- The name is NAME-group, not NAME: LWS creates a headless Service of the LeaderWorkerSet's
  own name (the subdomain of LWS_LEADER_ADDRESS), which must not take the model's Service name.
"""

from __future__ import annotations

from typing import Any

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.common import object_meta, with_spec_hash
from kiban.builders.deployment import (
    engine_container,
    engine_env,
    pod_spec,
    spec_affinity,
    template_annotations,
)
from kiban.builders.labels import common_labels, selector_labels
from kiban.builders.names import group_set_name
from kiban.config import OperatorConfig
from kiban.sizing.gpu import GpuSizing

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_KIND = "LeaderWorkerSet"
ROLE_LABEL = "kiban.dev/role"
LEADER = "leader"
WORKER = "worker"
MASTER_PORT = 29501  # vLLM 0.33's default --master-port, set explicitly
LEADER_ADDRESS = "$(LWS_LEADER_ADDRESS)"  # <lws>-<group>.<lws>.<namespace>, from the LWS pod webhook
WORKER_INDEX = "$(LWS_WORKER_INDEX)"  # 1 .. size-1 on workers
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"


SINGLE_NODE_ACCESS_MODES = ("ReadWriteOnce", "ReadWriteOncePod")


def shared_cache_problem(fm: FoundationModel) -> str | None:
    """Why the model cache cannot serve a group whose pods sit on different nodes, or None."""
    cache = fm.spec.cache
    if cache.type == "pvc" and cache.access_mode in SINGLE_NODE_ACCESS_MODES:
        return (f"spec.cache.accessMode {cache.access_mode} mounts on one node only, and a replica of this model "
                "spans nodes (one pod per node): use ReadWriteMany or an emptyDir cache")
    return None


def leader_selector(fm: FoundationModel) -> dict[str, str]:
    """The pods that serve the API of a multi-node model: its group leaders."""
    return {**selector_labels(fm), ROLE_LABEL: LEADER}


def distributed_args(sizing: GpuSizing, rank: str) -> list[str]:
    """vLLM's multi-node flags for one member (rank "0" on the leader)."""
    return [
        "--nnodes", str(sizing.nodes_per_replica),
        "--node-rank", rank,
        "--master-addr", LEADER_ADDRESS,
        "--master-port", str(MASTER_PORT),
    ]


def one_pod_per_node(fm: FoundationModel) -> dict[str, Any]:
    """spec.scheduling.affinity plus a required anti-affinity: no two pods of this model share a node."""
    affinity = spec_affinity(fm)
    anti = affinity.setdefault("podAntiAffinity", {})
    terms = anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", [])
    terms.append({"labelSelector": {"matchLabels": selector_labels(fm)}, "topologyKey": HOSTNAME_TOPOLOGY})
    return affinity


def leader_container(fm: FoundationModel, config: OperatorConfig, sizing: GpuSizing) -> dict[str, Any]:
    return engine_container(fm, config, sizing, distributed_args(sizing, "0"))


def worker_container(fm: FoundationModel, config: OperatorConfig, sizing: GpuSizing) -> dict[str, Any]:
    """The leader's container, headless: no API server, so no port, no probes, no API key."""
    container = engine_container(fm, config, sizing, [*distributed_args(sizing, WORKER_INDEX), "--headless"])
    for key in ("ports", "startupProbe", "readinessProbe", "livenessProbe"):
        container.pop(key, None)
    container["env"] = engine_env(fm, api_key=False)
    return container


def _template(fm: FoundationModel, config: OperatorConfig, role: str, container: dict[str, Any]) -> dict[str, Any]:
    profile = config.profile(fm.spec.accelerator.profile)
    return {
        "metadata": {
            "labels": {**common_labels(fm), ROLE_LABEL: role},
            "annotations": template_annotations(fm, profile),
        },
        "spec": pod_spec(fm, config, [container], affinity=one_pod_per_node(fm)),
    }


def build_leader_worker_set(
    fm: FoundationModel,
    config: OperatorConfig,
    sizing: GpuSizing,
    *,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The leaderworkerset.x-k8s.io/v1 LeaderWorkerSet running `fm` over sizing.nodes_per_replica nodes."""
    replicas = fm.spec.scaling.desired_replicas() if replicas is None else replicas
    max_surge, max_unavailable = fm.spec.rollout.strategy(replicas, fm.spec.scaling.min_replicas)
    group_set = {
        "apiVersion": LWS_API_VERSION,
        "kind": LWS_KIND,
        "metadata": object_meta(fm, group_set_name(fm.name)),
        "spec": {
            "replicas": replicas,
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {
                    "maxSurge": max_surge, "maxUnavailable": max_unavailable, "partition": 0,
                },
            },
            "networkConfig": {"subdomainPolicy": "Shared"},
            "leaderWorkerTemplate": {
                "size": sizing.nodes_per_replica,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _template(fm, config, LEADER, leader_container(fm, config, sizing)),
                "workerTemplate": _template(fm, config, WORKER, worker_container(fm, config, sizing)),
            },
        },
    }
    return with_spec_hash(group_set)
