"""The Prometheus Operator PodMonitor (monitoring.coreos.com/v1), built only where that API exists:
every engine pod scraped directly, with no dependency on the Service."""

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


def build_pod_monitor(fm: FoundationModel, config: OperatorConfig) -> dict[str, Any]:
    monitor = {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "PodMonitor",
        "metadata": object_meta(fm, workload_name(fm.name), labels=dict(config.monitor_labels)),
        "spec": {
            "selector": {"matchLabels": selector_labels(fm)},
            "podMetricsEndpoints": [
                {"port": PORT_NAME, "path": "/metrics", "interval": SCRAPE_INTERVAL, "scheme": "http"}
            ],
        },
    }
    return with_spec_hash(monitor)
