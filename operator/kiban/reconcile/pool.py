"""A thread pool for blocking API calls that serves urgent calls first.

Why: when 1,000 models arrive at once, the API server is the bottleneck. A user waits for a
model's Deployment (it is what starts pods); the Service, PDB, NetworkPolicy, status patch and
Events can follow. With one FIFO pool, model 900's Deployment queues behind 899 models' every
write; with priorities, every queued Deployment apply goes before any lower-priority call, so
all Deployments exist after about one write each instead of after all of them.

Within one priority, calls run in the order they were submitted.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

URGENT = 0  # the Deployment
NORMAL = 1  # other children, status, the autoscaler's calls (plain `submit`)
BEST_EFFORT = 2  # Events


class PriorityExecutor(Executor):
    """`workers` threads taking (priority, order of submission) from one queue."""

    def __init__(self, workers: int, name: str = "kiban-io") -> None:
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._shutdown = False
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self.submit_at(NORMAL, fn, *args, **kwargs)

    def submit_at(self, priority: int, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.put((priority, next(self._order), future, fn, args, kwargs))
        return future

    def _run(self) -> None:
        while True:
            _, _, future, fn, args, kwargs = self._queue.get()
            if future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits the future
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item[2] is not None:
                        item[2].cancel()
            for _ in self._threads:  # after everything queued: lowest priority, last in order
                self._queue.put((float("inf"), next(self._order), None, None, (), {}))
        if wait:
            for thread in self._threads:
                thread.join()
