"""One operator-wide work queue of FoundationModels to reconcile, drained by a few async workers.

Why a queue rather than reconciling inside each kopf handler: with 1,000 models applied at
once, one handler per event each doing its own writes shares the API among all of them, so
every model finishes late (p50 close to p99). A FIFO drained by a bounded number of workers
finishes the models in the order they came, deduplicates bursts of events for one model, and
lets kopf's handlers return at once (no per-object task is held for the length of a pass).

Semantics (client-go's workqueue): a model is at most once in the queue; a model added while a
worker is on it is queued again when that pass ends (the pass may have read an older body);
one model is never reconciled by two workers at once. `add_after` schedules a retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kiban.reconcile.logfmt import kv

log = logging.getLogger("kiban.queue")

ModelRef = tuple[str, str]
# work(ref, indexes, trigger) -> True when the pass wants a retry
Work = Callable[[ModelRef, Mapping[str, Any], str], Awaitable[bool]]


class WorkQueue:
    """A deduplicating FIFO of model refs, drained by `workers` tasks on the running event loop."""

    def __init__(self, work: Work, *, workers: int = 32, retry_seconds: float = 5.0) -> None:
        self._work = work
        self._workers = workers
        self.retry_seconds = retry_seconds
        self._order: asyncio.Queue[ModelRef] | None = None
        self._queued: dict[ModelRef, str] = {}  # ref -> trigger of the (first) request
        self._active: set[ModelRef] = set()
        self._dirty: dict[ModelRef, str] = {}  # added while active: run again afterwards
        self._indexes: Mapping[str, Any] = {}
        self._tasks: list[asyncio.Task] = []
        self._timers: dict[ModelRef, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, ref: ModelRef, indexes: Mapping[str, Any] | None = None, trigger: str = "") -> None:
        """Ask for a pass over `ref`; a no-op when one is already waiting."""
        if indexes:
            self._indexes = indexes  # kopf's live index objects: the same ones every time
        self._start()
        if ref in self._active:
            self._dirty.setdefault(ref, trigger)
            return
        if ref in self._queued:
            return
        self._queued[ref] = trigger
        assert self._order is not None
        self._order.put_nowait(ref)

    def add_after(self, ref: ModelRef, delay: float, trigger: str = "retry") -> None:
        """Ask for a pass over `ref` in `delay` seconds (one timer per model; the first wins)."""
        if ref in self._timers:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(ref, None)
            self.add(ref, trigger=trigger)

        self._timers[ref] = loop.call_later(delay, fire)

    def forget(self, ref: ModelRef) -> None:
        """A deleted model: drop its pending retry (a queued pass finds it gone and skips)."""
        timer = self._timers.pop(ref, None)
        if timer is not None:
            timer.cancel()

    def _start(self) -> None:
        if self._tasks:
            return
        self._order = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._worker(), name=f"kiban-reconcile-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        """Cancel the workers and pending retries (operator shutdown)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _worker(self) -> None:
        assert self._order is not None
        while True:
            ref = await self._order.get()
            trigger = self._queued.pop(ref)
            self._active.add(ref)
            retry = False
            try:
                retry = await self._work(ref, self._indexes, trigger)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed pass is retried, never kills a worker
                log.exception(kv("Failed to reconcile FoundationModel", name=ref[1], namespace=ref[0],
                                 error=f"{type(exc).__name__}: {exc}"))
                retry = True
            finally:
                self._active.discard(ref)
            if ref in self._dirty:
                self.add(ref, trigger=self._dirty.pop(ref))
            elif retry:
                self.add_after(ref, self.retry_seconds)
