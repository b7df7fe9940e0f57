"""One operator-wide work queue of FoundationModels to reconcile, drained by a few async workers.

Why a queue rather than reconciling inside each kopf handler: it deduplicates bursts of
events for one model (at 1,000 models a model's child, pod and status events mostly fold into
one pass), starts passes in the order models came, retries failed passes without kopf's
per-object progress annotations, and lets kopf's handlers return at once.

Semantics (client-go's workqueue): a model is at most once in the queue; a model added while a
worker is on it is queued again when that pass ends (the pass may have read an older body);
one model is never reconciled by two workers at once. A failed pass is retried after an
exponential backoff with jitter (`retry_delay`: 2 s, 4 s, 8 s, ... up to 5 minutes, each
between half and all of that), reset by the model's next successful pass, so a model the API
server keeps refusing costs a few writes an hour instead of one every 5 s forever.

`pause()` stops starting passes (a replica that is not the leader keeps its queue but acts on
nothing); `resume()` drains what was queued meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kiban.reconcile.logfmt import kv

log = logging.getLogger("kiban.queue")

ModelRef = tuple[str, str]
# work(ref, indexes, trigger) -> True when the pass wants a retry
Work = Callable[[ModelRef, Mapping[str, Any], str], Awaitable[bool]]
RETRY_BASE_SECONDS = 2.0
RETRY_MAX_SECONDS = 300.0


def retry_delay(failures: int, base_s: float = RETRY_BASE_SECONDS, cap_s: float = RETRY_MAX_SECONDS,
                rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry number `failures` (1 for the first): base x 2^(failures-1), capped,
    then jittered into [half, all] of it, so models that failed together do not retry together."""
    if failures < 1:
        raise ValueError(f"failures must be >= 1, got {failures!r}")
    ceiling = min(cap_s, base_s * 2 ** min(failures - 1, 60))
    return ceiling * (0.5 + 0.5 * rng())


class WorkQueue:
    """A deduplicating FIFO of model refs, drained by up to `workers` tasks on the running loop.

    Drainer tasks exist only while there is work: an idle operator holds none, and a burst
    starts one per queued model up to `workers`. The cap is high on purpose: a pass spends
    most of its time waiting for the API, and the Deployment-first I/O pool
    (kiban.reconcile.pool) can only put a model's Deployment ahead of other models' writes
    when that model's pass has started. With a cap of 1,024 and 1,200 models, the passes in
    flight all waited for their lower-priority writes and new models started at ~0.5/s.
    """

    def __init__(self, work: Work, *, workers: int = 10_000, retry_seconds: float = RETRY_BASE_SECONDS,
                 max_retry_seconds: float = RETRY_MAX_SECONDS, paused: bool = False) -> None:
        self._work = work
        self._workers = workers
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.failures: dict[ModelRef, int] = {}  # failed passes in a row, per model
        self._paused = paused
        self._order: deque[ModelRef] = deque()
        self._queued: dict[ModelRef, str] = {}  # ref -> trigger of the (first) request
        self._active: set[ModelRef] = set()
        self._dirty: dict[ModelRef, str] = {}  # added while active: run again afterwards
        self._indexes: Mapping[str, Any] = {}
        self._tasks: set[asyncio.Task] = set()
        # drainers still able to take work: decremented in the drainer's own `finally`, so one
        # that has returned (but whose done-callback has not run yet) is never counted
        self._draining = 0
        self._timers: dict[ModelRef, asyncio.TimerHandle] = {}
        self._stopped = False

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, ref: ModelRef, indexes: Mapping[str, Any] | None = None, trigger: str = "") -> None:
        """Ask for a pass over `ref`; a no-op when one is already waiting."""
        if indexes:
            self._indexes = indexes  # kopf's live index objects: the same ones every time
        if ref in self._active:
            self._dirty.setdefault(ref, trigger)
            return
        if ref in self._queued or self._stopped:
            return
        self._queued[ref] = trigger
        self._order.append(ref)
        self._start_drainers()

    def _start_drainers(self) -> None:
        while not self._paused and self._draining < min(self._workers, len(self._order) + len(self._active)):
            task = asyncio.get_running_loop().create_task(self._drain(), name="kiban-reconcile")
            self._draining += 1
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if self._draining >= len(self._order):
                break

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Start no more passes (passes in flight finish); adds are kept for resume()."""
        self._paused = True

    def resume(self) -> None:
        """Drain everything queued while paused."""
        self._paused = False
        self._start_drainers()

    def add_after(self, ref: ModelRef, delay: float, trigger: str = "retry") -> None:
        """Ask for a pass over `ref` in `delay` seconds (one timer per model; the first wins)."""
        if ref in self._timers or self._stopped:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(ref, None)
            self.add(ref, trigger=trigger)

        self._timers[ref] = loop.call_later(delay, fire)

    def forget(self, ref: ModelRef) -> None:
        """A deleted model: drop its pending retry (a queued pass finds it gone and skips)."""
        self.failures.pop(ref, None)
        timer = self._timers.pop(ref, None)
        if timer is not None:
            timer.cancel()

    async def stop(self) -> None:
        """Cancel the drainers and pending retries (operator shutdown)."""
        self._stopped = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain(self) -> None:
        try:
            await self._drain_queue()
        finally:
            self._draining -= 1

    async def _drain_queue(self) -> None:
        while self._order and not self._paused:
            ref = self._order.popleft()
            trigger = self._queued.pop(ref)
            self._active.add(ref)
            retry = False
            try:
                retry = await self._work(ref, self._indexes, trigger)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed pass is retried, never kills a drainer
                log.exception(kv("Failed to reconcile FoundationModel", name=ref[1], namespace=ref[0],
                                 error=f"{type(exc).__name__}: {exc}"))
                retry = True
            finally:
                self._active.discard(ref)
            if retry:
                self.failures[ref] = self.failures.get(ref, 0) + 1
            else:
                self.failures.pop(ref, None)
            if ref in self._dirty:
                self.add(ref, trigger=self._dirty.pop(ref))
            elif retry:
                delay = retry_delay(self.failures[ref], self.retry_seconds, self.max_retry_seconds)
                self.add_after(ref, delay)
