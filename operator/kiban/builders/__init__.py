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
    """Every object `fm` should own, in apply order (claim first, Deployment before its extras).

    sizing: from resolve_sizing (computed here when None). The caller decides what to do when
      sizing.fits is False (the Deployment is still built, with the largest GPU count tried).
    replicas: overrides fm.spec.scaling.desired_replicas().
    available_apis: group/versions the cluster serves; PodMonitor needs monitoring.coreos.com/v1,
      Route needs route.openshift.io/v1, InferencePool inference.networking.k8s.io/v1.
    Raises kiban.config.ConfigError when spec.accelerator.profile is unknown.
    """
    profile = config.profile(fm.spec.accelerator.profile)
    sizing = sizing or resolve_sizing(fm.spec, profile)
    children: list[dict[str, Any] | None] = [
        build_cache_pvc(fm),
        build_deployment(fm, config, sizing, replicas=replicas),
        build_service(fm),
        build_pdb(fm),
        build_network_policy(fm, config) if fm.spec.exposure.network_policy else None,
        build_pod_monitor(fm, config) if MONITORING_API_VERSION in available_apis else None,
        build_route(fm) if ROUTE_API_VERSION in available_apis else None,
        build_inference_pool(fm) if INFERENCE_POOL_API_VERSION in available_apis and wants_inference_pool(fm) else None,
    ]
    return [child for child in children if child is not None]


__all__ = [
    "INFERENCE_POOL_API_VERSION",
    "MONITORING_API_VERSION",
    "ROUTE_API_VERSION",
    "build_cache_pvc",
    "build_children",
    "build_deployment",
    "build_inference_pool",
    "build_network_policy",
    "build_pdb",
    "build_pod_monitor",
    "build_route",
    "build_service",
    "cache_claim_name",
    "common_labels",
    "endpoint_url",
    "selector_labels",
    "selector_string",
    "workload_name",
]
