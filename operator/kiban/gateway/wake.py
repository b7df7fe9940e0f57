"""The gateway's side of wake-from-zero: report held requests in the model's status.

While this replica holds requests for a model, it keeps the entry `status.gateway.held.<pod>`
= {requests, since, heartbeat} current (a JSON merge patch of that key alone, so replicas never
overwrite each other), within a moment of the first held request and every HEARTBEAT_S after;
when it holds none, it removes its entry. The autoscaler (kiban.autoscale.wake) scales a model
at zero to one replica on it at once, and ignores entries without a recent heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("kiban.gateway.wake")

HEARTBEAT_S = 10.0
MIN_GAP_S = 0.5  # changes within this are folded into one patch


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def held_patch(pod_name: str, requests: int, since: str, heartbeat: str) -> dict[str, Any]:
    """The merge patch of this replica's entry; requests 0 removes it (pure)."""
    entry = {"requests": requests, "since": since, "heartbeat": heartbeat} if requests > 0 else None
    return {"status": {"gateway": {"held": {pod_name: entry}}}}


class Waker:
    """One reporting task per model while this replica holds requests for it."""

    def __init__(self, api: Any, pod_name: str, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.api = api
        self.pod_name = pod_name
        self.heartbeat_s = heartbeat_s
        self.counts: dict[tuple[str, str], int] = {}
        self.changed: dict[tuple[str, str], asyncio.Event] = {}
        self.tasks: dict[tuple[str, str], asyncio.Task] = {}
        self.patches = 0  # sent, for tests and logs
        self.stopping = False

    def update(self, ref: tuple[str, str], state: Any) -> None:
        count = state.holding()
        self.counts[ref] = count
        if ref in self.tasks:
            self.changed[ref].set()
        elif count > 0:
            self.changed[ref] = asyncio.Event()
            self.tasks[ref] = asyncio.get_running_loop().create_task(self._report(ref))

    async def _report(self, ref: tuple[str, str]) -> None:
        namespace, name = ref
        since = _now()
        try:
            while True:
                count = self.counts.get(ref, 0)
                self.changed[ref].clear()
                try:
                    await self.api.patch_status(namespace, name, held_patch(self.pod_name, count, since, _now()))
                    self.patches += 1
                except Exception as exc:  # noqa: BLE001 - the hold goes on; the autoscaler's timer may still wake it
                    log.warning("Failed to report held requests model=%s/%s error=%s", namespace, name, exc)
                if count == 0:
                    return
                await asyncio.sleep(MIN_GAP_S)
                try:
                    await asyncio.wait_for(self.changed[ref].wait(), timeout=max(0.0, self.heartbeat_s - MIN_GAP_S))
                except asyncio.TimeoutError:
                    pass
        finally:
            self.tasks.pop(ref, None)
            self.changed.pop(ref, None)
            if self.counts.get(ref, 0) > 0 and not self.stopping:
                # held again between the last patch and now: start over
                self.changed[ref] = asyncio.Event()
                self.tasks[ref] = asyncio.get_running_loop().create_task(self._report(ref))

    async def stop(self) -> None:
        """Remove this replica's entries (best effort) and end the tasks."""
        self.stopping = True
        tasks = list(self.tasks.values())
        for ref in list(self.counts):
            self.counts[ref] = 0
            if ref in self.changed:
                self.changed[ref].set()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
