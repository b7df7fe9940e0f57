"""The operator's background tasks: who leads, and what the leader runs besides the handlers.

Every replica runs the leader election (kiban.reconcile.leader) and an event-loop lag monitor.
The replica that holds the Lease also runs, until it stops leading:

- the work queue (kiban.reconcile.queue), paused on every other replica;
- the resync (kiban.reconcile.resync) at once, every `resync_seconds`, and whenever the API
  server answers again after a failure (a child deleted during an outage is re-created
  without a restart);
- the autoscaler (kiban.autoscale.model_pass.Autoscaler.run_pass): one task, one pass over
  every model every `autoscale_interval_s`, instead of a kopf timer per model (which put a
  finalizer on every model and ran each model's capacity maths on the event loop); between
  passes the same task wakes at once for a model the gateway holds requests for at zero
  replicas (Autoscaler.notice from the model's watch event) and decides it alone.

kiban.handlers calls `start` from kopf's startup handler (with the live indexes on the
context) and `stop` from its cleanup handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from kiban.reconcile.leader import LeaderElector, LeaseSettings
from kiban.reconcile.logfmt import kv
from kiban.reconcile.resync import resync_once

log = logging.getLogger("kiban.tasks")

LAG_PROBE_S = 0.5  # the lag monitor's timer
FRESH_START_S = 30.0  # leading this soon after start: kopf's own first list is as fresh as a resync
RESYNC_RETRY_S = (1.0, 30.0)  # a failed resync is tried again after 1 s, doubling up to 30 s


class OperatorTasks:
    """The background tasks of one operator instance."""

    def __init__(self, context: Any, *, namespaces: Sequence[str], lease: LeaseSettings,
                 resync_seconds: float, autoscale_interval_s: float | None, identity: str | None = None) -> None:
        self.context = context
        self.namespaces = list(namespaces)
        self.resync_seconds = resync_seconds
        self.autoscale_interval_s = autoscale_interval_s
        self.elector = LeaderElector(context.writer, lease, identity=identity, on_started=self._lead,
                                     on_stopped=self._follow, on_renewed_after_failure=self._after_outage)
        self._started = time.monotonic()
        self._always: list[asyncio.Task] = []
        self._leading: list[asyncio.Task] = []
        self._resync_now = asyncio.Event()

    @property
    def identity(self) -> str:
        return self.elector.identity

    async def start(self, context: Any) -> None:
        self._always = [asyncio.create_task(self.elector.run(), name="kiban-leader-election"),
                        asyncio.create_task(self._lag_monitor(), name="kiban-loop-lag")]

    async def stop(self, context: Any) -> None:
        await self._cancel(self._always)  # the elector stops leading and releases the Lease
        await self._cancel(self._leading)
        self.elector.shutdown()

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()

    # -- leadership ----------------------------------------------------------------------------

    async def _lead(self) -> None:
        context = self.context
        context.leading = True
        context.metrics.leader.set(1)
        if time.monotonic() - self._started > FRESH_START_S:
            self._resync_now.set()  # a standby's cache may have missed events: resync at once
        self._leading = [asyncio.create_task(self._resync_loop(), name="kiban-resync")]
        if context.autoscaler is not None and self.autoscale_interval_s:
            self._leading.append(asyncio.create_task(self._autoscale_loop(), name="kiban-autoscaler"))
        if context.queue is not None:
            context.queue.resume()

    async def _follow(self) -> None:
        context = self.context
        context.leading = False
        context.metrics.leader.set(0)
        if context.queue is not None:
            context.queue.pause()
        await self._cancel(self._leading)

    async def _after_outage(self) -> None:
        log.info(kv("The API server answers again: resyncing"))
        self._resync_now.set()

    # -- the leader's loops --------------------------------------------------------------------

    async def _resync_loop(self) -> None:
        delay = RESYNC_RETRY_S[0]
        while True:
            try:
                await asyncio.wait_for(self._resync_now.wait(), timeout=self.resync_seconds)
            except asyncio.TimeoutError:
                pass
            self._resync_now.clear()
            while True:
                try:
                    await resync_once(self.context, self.namespaces)
                    self.context.metrics.resyncs_total.labels(result="success").inc()
                    delay = RESYNC_RETRY_S[0]
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the API is away: try again soon
                    self.context.metrics.resyncs_total.labels(result="error").inc()
                    log.warning(kv("Failed to resync; trying again", seconds=delay,
                                   error=f"{type(exc).__name__}: {exc}"[:300]))
                    await asyncio.sleep(delay)
                    delay = min(RESYNC_RETRY_S[1], delay * 2)

    async def _autoscale_loop(self) -> None:
        """A full pass every interval; between them, a wake pass for the models the gateway holds
        requests for at zero (Autoscaler.notice) as soon as they are noticed. Passes never overlap:
        a wake noticed during a full pass runs right after it."""
        interval = float(self.autoscale_interval_s or 15.0)
        autoscaler = self.context.autoscaler
        while True:
            started = time.monotonic()
            await self._autoscale_pass(autoscaler, None)
            while (left := interval - (time.monotonic() - started)) > 0:
                woken = await autoscaler.wait_for_wake(left)
                if woken:
                    await self._autoscale_pass(autoscaler, woken)

    async def _autoscale_pass(self, autoscaler: Any, only: set | None) -> None:
        try:
            summary = await autoscaler.run_pass(self.context, self.context.indexes, only=only)
            log.info(kv("Autoscaler pass" if only is None else "Autoscaler wake pass", models=summary.decided,
                        seconds=round(summary.seconds, 2), **summary.phases))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad pass must not end autoscaling
            log.exception(kv("Autoscaler pass failed", error=f"{type(exc).__name__}: {exc}"[:300]))

    # -- every replica -------------------------------------------------------------------------

    async def _lag_monitor(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self.context.metrics.event_loop_lag_seconds.observe(max(0.0, loop.time() - before - LAG_PROBE_S))
