"""Time as the Kubernetes API writes it: RFC 3339 in UTC, whole seconds ("2026-12-01T18:35:51Z").

One formatter for every timestamp the operator writes (condition transition times,
status.scaling.lastScaleTime, Event times, drift re-fit deadlines), from epoch seconds (the
autoscaler's injected clock) or a datetime (the reconciler's), and the one parser of the
API server's timestamps (pods' creation and Ready times, for the learned cold start).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def rfc3339(moment: float | datetime | None = None) -> str:
    """`moment` (epoch seconds or a datetime; None: now) as RFC 3339 UTC with a Z suffix."""
    if moment is None:
        moment = time.time()
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    elif moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_s(timestamp: str | None) -> float | None:
    """An RFC 3339 timestamp as the API server writes it ("2026-12-01T18:35:51Z", fractions and
    offsets allowed) in epoch seconds; None for None or text that is not one."""
    if not timestamp or not isinstance(timestamp, str):
        return None
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
