"""The Service in front of the engine pods: port 8000, named http."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.common import object_meta, with_spec_hash
from kiban.builders.deployment import HTTP_PORT, PORT_NAME
from kiban.builders.labels import selector_labels
from kiban.builders.names import workload_name


def build_service(fm: FoundationModel, selector: Mapping[str, str] | None = None) -> dict[str, Any]:
    """selector: the pods that serve the API when not all of them do (a multi-node model's leaders)."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(fm, workload_name(fm.name)),
        "spec": {
            "type": fm.spec.exposure.service_type,
            "selector": dict(selector) if selector is not None else selector_labels(fm),
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
