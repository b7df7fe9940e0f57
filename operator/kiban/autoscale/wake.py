"""The wake-from-zero signal: requests the Kiban gateway holds for a model with no ready replica.

Each gateway replica writes, while it holds requests for a model, an entry under the model's
`status.gateway.held` keyed by its pod name ({requests, since, heartbeat}), refreshed every few
seconds and removed when it holds none (kiban.gateway.wake). The autoscaler reads it here
(pure): entries whose heartbeat is older than STALE_AFTER_S are ignored, so a gateway replica
that died while holding cannot keep a model awake.

Why the FoundationModel's status and not the gateway's Prometheus metric: the operator's watch
delivers the status patch within a second, and the handler starts an autoscale pass at once,
so the wake costs no scrape interval and no rate window (15 + 15 s by default) on top of the
cold start the held requests already wait for. The price is one RBAC grant to the gateway,
`patch` on `foundationmodels/status` only: it cannot change a spec (image, replicas, key),
and the autoscaler still decides, within minReplicas..maxReplicas and the GPU budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

STALE_AFTER_S = 60.0


def _seconds(text: Any) -> float | None:
    """RFC 3339 (the API server's 'Z' form included) to epoch seconds; None when unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def held_requests(status: Mapping[str, Any] | None, now_s: float, stale_after_s: float = STALE_AFTER_S) -> int:
    """Requests held for the model by the gateway replicas whose entries are fresh."""
    held = (((status or {}).get("gateway") or {}).get("held")) or {}
    total = 0
    for entry in held.values() if isinstance(held, Mapping) else ():
        if not isinstance(entry, Mapping):
            continue
        beat = _seconds(entry.get("heartbeat"))
        count = entry.get("requests")
        if beat is None or not isinstance(count, int) or count <= 0 or now_s - beat > stale_after_s:
            continue
        total += count
    return total


def wake_wanted(body: Mapping[str, Any], now_s: float) -> bool:
    """Whether a model's body asks for a wake now: held requests and no replica requested."""
    spec = body.get("spec") or {}
    scaling = spec.get("scaling") or {}
    if not scaling.get("autoscaling", True):
        return False
    replicas = scaling.get("replicas")
    current = int(scaling.get("minReplicas", 1) if replicas is None else replicas)
    return current == 0 and held_requests(body.get("status"), now_s) > 0
