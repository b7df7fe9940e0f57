"""A local Kubernetes control plane with simulated GPU nodes, and a Prometheus server, for tests,
the demo and `kiban dev-cluster`. Binaries come from `make tools` (see hack/tools/README.md)."""

from kiban_dev.devcluster.cluster import ControlPlane, ControlPlaneError, wait_crds_established
from kiban_dev.devcluster.nodes import DEFAULT_POOL, NODE_KINDS, build_node, build_pool
from kiban_dev.devcluster.prometheus import PrometheusError, PrometheusServer
from kiban_dev.devcluster.tools import ToolsMissingError, tool_path

__all__ = [
    "DEFAULT_POOL",
    "NODE_KINDS",
    "ControlPlane",
    "ControlPlaneError",
    "PrometheusError",
    "PrometheusServer",
    "ToolsMissingError",
    "build_node",
    "build_pool",
    "tool_path",
    "wait_crds_established",
]
