"""FoundationModel bodies for the gateway tests (a module name no other test directory uses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]


def fm_body(name: str = "m", *, namespace: str = "ns", created: str = "2026-01-01T00:00:00Z",
            gateway: dict | None = None, **spec: Any) -> dict:
    body = {
        "apiVersion": "kiban.dev/v1alpha1", "kind": "FoundationModel",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "creationTimestamp": created},
        "spec": {"model": {"uri": "hf://org/model", "parameters": "8B"}, "accelerator": {"profile": "nvidia-l4"},
                 "scaling": {"minReplicas": 0, "maxReplicas": 2, "autoscaling": False}, **spec},
    }
    if gateway is not None:
        body["spec"]["exposure"] = {"gateway": gateway}
    return body
