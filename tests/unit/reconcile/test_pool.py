"""PriorityExecutor: urgent calls first, submission order within a priority, results and errors."""

from __future__ import annotations

import threading

import pytest

from kiban.reconcile.pool import BEST_EFFORT, NORMAL, URGENT, PriorityExecutor


def test_queued_calls_run_by_priority_then_in_submission_order():
    pool = PriorityExecutor(1)
    gate, ran = threading.Event(), []
    blocker = pool.submit(gate.wait)  # holds the only thread while the rest queue up
    futures = [
        pool.submit_at(BEST_EFFORT, ran.append, "event"),
        pool.submit_at(NORMAL, ran.append, "service"),
        pool.submit_at(URGENT, ran.append, "deployment-1"),
        pool.submit(ran.append, "status"),
        pool.submit_at(URGENT, ran.append, "deployment-2"),
    ]
    gate.set()
    blocker.result(timeout=10)
    for future in futures:
        future.result(timeout=10)
    pool.shutdown()
    assert ran == ["deployment-1", "deployment-2", "service", "status", "event"]


def test_results_and_exceptions_reach_the_caller():
    pool = PriorityExecutor(2)
    assert pool.submit(lambda a, b: a + b, 2, 3).result(timeout=10) == 5
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(timeout=10)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(print)


def test_shutdown_with_cancel_drops_what_had_not_started():
    pool = PriorityExecutor(1)
    gate, started = threading.Event(), threading.Event()
    running = pool.submit(lambda: (started.set(), gate.wait()))
    assert started.wait(timeout=10)
    queued = pool.submit(print, "never")
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    running.result(timeout=10)
    assert queued.cancelled()
