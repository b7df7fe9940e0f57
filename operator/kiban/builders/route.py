"""OpenShift Route (route.openshift.io/v1), built only where that API exists and spec.exposure.route is true.

Edge TLS, HTTP redirected to HTTPS, and only the /v1 path forwarded: that is what vLLM's
--api-key guards, so /metrics and /invocations stay inside the cluster.
"""

from __future__ import annotations

from typing import Any

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.common import object_meta, with_spec_hash
from kiban.builders.deployment import PORT_NAME
from kiban.builders.names import workload_name

ROUTE_API_VERSION = "route.openshift.io/v1"
GUARDED_PATH = "/v1"


def build_route(fm: FoundationModel) -> dict[str, Any] | None:
    """None unless spec.exposure.route."""
    exposure = fm.spec.exposure
    if not exposure.route:
        return None
    spec: dict[str, Any] = {
        "to": {"kind": "Service", "name": workload_name(fm.name), "weight": 100},
        "port": {"targetPort": PORT_NAME},
        "path": GUARDED_PATH,
        "tls": {"termination": "edge", "insecureEdgeTerminationPolicy": "Redirect"},
        "wildcardPolicy": "None",
    }
    if exposure.route_host:
        spec["host"] = exposure.route_host
    route = {
        "apiVersion": ROUTE_API_VERSION,
        "kind": "Route",
        "metadata": object_meta(fm, workload_name(fm.name)),
        "spec": spec,
    }
    return with_spec_hash(route)
