"""Pure desired-state builders: a FoundationModel and the operator config in, plain dicts out.

`build_children` is what the reconciler calls; each builder is also usable on its own.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.deployment import build_deployment
from kiban.builders.inferencepool import INFERENCE_POOL_API_VERSION, build_inference_pool, wants_inference_pool
from kiban.builders.labels import common_labels, selector_labels, selector_string
from kiban.builders.leaderworkerset import LWS_API_VERSION, build_leader_worker_set, leader_selector
from kiban.builders.monitor import MONITORING_API_VERSION, build_pod_monitor
from kiban.builders.names import cache_claim_name, workload_name
from kiban.builders.networkpolicy import build_network_policy
from kiban.builders.pdb import build_pdb
from kiban.builders.pvc import build_cache_pvc
from kiban.builders.route import ROUTE_API_VERSION, build_route
from kiban.builders.service import build_service, endpoint_url
from kiban.config import OperatorConfig
from kiban.sizing.gpu import GpuSizing, resolve_sizing


def build_children(
    fm: FoundationModel,
    config: OperatorConfig,
    *,
    sizing: GpuSizing | None = None,
    replicas: int | None = None,
    available_apis: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Every object `fm` should own, in apply order (claim first, the workload before its extras).

    The workload is a Deployment, or for a replica that spans nodes (sizing.nodes_per_replica > 1)
    a LeaderWorkerSet with one group per replica, whose leaders alone the Service selects; the
    caller checks that leaderworkerset.x-k8s.io/v1 is served before applying it.
    sizing: from resolve_sizing (computed here when None). The caller decides what to do when
      sizing.fits is False (the workload is still built, with the largest layout tried).
    replicas: overrides fm.spec.scaling.desired_replicas().
    available_apis: group/versions the cluster serves; PodMonitor needs monitoring.coreos.com/v1,
      Route needs route.openshift.io/v1, InferencePool inference.networking.k8s.io/v1.
    Raises kiban.config.ConfigError when spec.accelerator.profile is unknown.
    """
    profile = config.profile(fm.spec.accelerator.profile)
    sizing = sizing or resolve_sizing(fm.spec, profile, config.max_nodes_per_replica)
    multi = sizing.multi_node
    children: list[dict[str, Any] | None] = [
        build_cache_pvc(fm),
        (build_leader_worker_set if multi else build_deployment)(fm, config, sizing, replicas=replicas),
        build_service(fm, leader_selector(fm) if multi else None),
        build_pdb(fm),
        build_network_policy(fm, config, between_pods=multi) if fm.spec.exposure.network_policy else None,
        build_pod_monitor(fm, config) if MONITORING_API_VERSION in available_apis else None,
        build_route(fm) if ROUTE_API_VERSION in available_apis else None,
        (build_inference_pool(fm, leader_selector(fm) if multi else None)
         if INFERENCE_POOL_API_VERSION in available_apis and wants_inference_pool(fm) else None),
    ]
    return [child for child in children if child is not None]


__all__ = [
    "INFERENCE_POOL_API_VERSION",
    "LWS_API_VERSION",
    "MONITORING_API_VERSION",
    "ROUTE_API_VERSION",
    "build_cache_pvc",
    "build_children",
    "build_deployment",
    "build_inference_pool",
    "build_leader_worker_set",
    "build_network_policy",
    "build_pdb",
    "build_pod_monitor",
    "build_route",
    "build_service",
    "cache_claim_name",
    "common_labels",
    "endpoint_url",
    "leader_selector",
    "selector_labels",
    "selector_string",
    "workload_name",
]
