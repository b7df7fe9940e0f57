"""Prometheus Operator scrape objects (monitoring.coreos.com/v1), built only where that API exists.

The reconciler uses the PodMonitor (every engine pod scraped directly, no dependency on the
Service); the ServiceMonitor is for installations whose Prometheus selects only ServiceMonitors.
"""

from __future__ import annotations

from typing import Any

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.common import object_meta, with_spec_hash
from kiban.builders.deployment import PORT_NAME
from kiban.builders.labels import selector_labels
from kiban.builders.names import workload_name
from kiban.config import OperatorConfig

MONITORING_API_VERSION = "monitoring.coreos.com/v1"
SCRAPE_INTERVAL = "15s"


def _endpoint() -> dict[str, Any]:
    return {"port": PORT_NAME, "path": "/metrics", "interval": SCRAPE_INTERVAL, "scheme": "http"}


def build_pod_monitor(fm: FoundationModel, config: OperatorConfig) -> dict[str, Any]:
    monitor = {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "PodMonitor",
        "metadata": object_meta(fm, workload_name(fm.name), labels=dict(config.monitor_labels)),
        "spec": {
            "selector": {"matchLabels": selector_labels(fm)},
            "podMetricsEndpoints": [_endpoint()],
        },
    }
    return with_spec_hash(monitor)


def build_service_monitor(fm: FoundationModel, config: OperatorConfig) -> dict[str, Any]:
    monitor = {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": object_meta(fm, workload_name(fm.name), labels=dict(config.monitor_labels)),
        "spec": {
            "selector": {"matchLabels": selector_labels(fm)},
            "endpoints": [_endpoint()],
        },
    }
    return with_spec_hash(monitor)
