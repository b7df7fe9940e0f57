"""The Service in front of the engine pods: port 8000, named http."""

from __future__ import annotations

from typing import Any

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.common import object_meta, with_spec_hash
from kiban.builders.deployment import HTTP_PORT, PORT_NAME
from kiban.builders.labels import selector_labels
from kiban.builders.names import workload_name


def build_service(fm: FoundationModel) -> dict[str, Any]:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(fm, workload_name(fm.name)),
        "spec": {
            "type": fm.spec.exposure.service_type,
            "selector": selector_labels(fm),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": HTTP_PORT,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }
    return with_spec_hash(service)


def endpoint_url(service_name: str, namespace: str) -> str:
    """The in-cluster OpenAI-compatible base URL of a model's Service (status.endpoint)."""
    return f"http://{service_name}.{namespace}.svc:{HTTP_PORT}/v1"
