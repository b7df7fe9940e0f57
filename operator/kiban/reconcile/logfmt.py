"""Kubernetes-style structured log lines: "Created Deployment" name="x" namespace="y".

The same text reads well under any formatter (kopf's plain or JSON one), and the fields are
machine-parsable; never pass a secret's value as a field.
"""

from __future__ import annotations

import json
from typing import Any


def kv(message: str, **fields: Any) -> str:
    """Render a past-tense message followed by key="value" pairs, in klog's structured style."""
    parts = [json.dumps(message)]
    parts.extend(f"{key}={json.dumps(value, default=str)}" for key, value in fields.items() if value is not None)
    return " ".join(parts)
