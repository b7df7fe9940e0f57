"""WorkQueue: dedup, re-run when added mid-pass, one pass per model at a time, retries."""

from __future__ import annotations

import asyncio

from kiban.reconcile.queue import WorkQueue

A, B = ("ns", "a"), ("ns", "b")


def run(coro):
    return asyncio.run(coro)


def test_a_burst_of_adds_for_one_model_is_one_pass():
    async def scenario():
        calls: list[tuple] = []

        async def work(ref, indexes, trigger):
            calls.append((ref, trigger))
            return False

        queue = WorkQueue(work, workers=4)
        for trigger in ("added", "modified", "resync"):
            queue.add(A, {"idx": 1}, trigger)
        queue.add(B, trigger="added")
        await asyncio.sleep(0.01)
        await queue.stop()
        return calls

    assert run(scenario()) == [(A, "added"), (B, "added")]


def test_models_are_served_in_the_order_they_came():
    async def scenario():
        order: list[str] = []

        async def work(ref, indexes, trigger):
            order.append(ref[1])
            return False

        queue = WorkQueue(work, workers=1)
        for name in "cab":
            queue.add(("ns", name))
        await asyncio.sleep(0.01)
        await queue.stop()
        return order

    assert run(scenario()) == ["c", "a", "b"]


def test_an_add_during_a_pass_runs_again_after_it_never_alongside():
    async def scenario():
        running, overlaps, triggers = set(), [], []
        release = asyncio.Event()

        async def work(ref, indexes, trigger):
            if ref in running:
                overlaps.append(ref)
            running.add(ref)
            triggers.append(trigger)
            if trigger == "first":
                await release.wait()
            running.discard(ref)
            return False

        queue = WorkQueue(work, workers=4)
        queue.add(A, trigger="first")
        await asyncio.sleep(0.01)
        queue.add(A, trigger="second")  # A is being worked on: must wait, then run once more
        queue.add(A, trigger="third")
        await asyncio.sleep(0.01)
        assert triggers == ["first"]
        release.set()
        await asyncio.sleep(0.01)
        await queue.stop()
        return overlaps, triggers

    overlaps, triggers = run(scenario())
    assert overlaps == [] and triggers == ["first", "second"]


def test_the_indexes_given_last_are_the_ones_passes_read():
    async def scenario():
        seen = []

        async def work(ref, indexes, trigger):
            seen.append(indexes)
            return False

        queue = WorkQueue(work, workers=1)
        queue.add(A, {"v": 1})
        queue.add(B)  # no indexes given: keeps the last ones
        await asyncio.sleep(0.01)
        await queue.stop()
        return seen

    assert run(scenario()) == [{"v": 1}, {"v": 1}]


def test_a_failed_pass_is_retried_after_the_delay_and_a_crash_does_not_kill_the_worker():
    async def scenario():
        triggers = []

        async def work(ref, indexes, trigger):
            triggers.append(trigger)
            if len(triggers) == 1:
                return True  # wants a retry
            if len(triggers) == 2:
                raise RuntimeError("boom")
            return False

        queue = WorkQueue(work, workers=1, retry_seconds=0.01)
        queue.add(A, trigger="added")
        for _ in range(50):
            await asyncio.sleep(0.01)
            if len(triggers) >= 3:
                break
        await queue.stop()
        return triggers

    assert run(scenario()) == ["added", "retry", "retry"]


def test_forget_cancels_a_pending_retry():
    async def scenario():
        triggers = []

        async def work(ref, indexes, trigger):
            triggers.append(trigger)
            return True

        queue = WorkQueue(work, workers=1, retry_seconds=0.05)
        queue.add(A, trigger="added")
        await asyncio.sleep(0.01)
        queue.forget(A)
        await asyncio.sleep(0.1)
        await queue.stop()
        return triggers

    assert run(scenario()) == ["added"]


def test_add_while_the_last_drainer_is_returning_still_gets_a_pass():
    """An add() after a drainer's loop ended but before its done-callback ran must start a drainer."""
    async def scenario():
        calls: list[str] = []
        queue: WorkQueue

        async def work(ref, indexes, trigger):
            calls.append(ref[1])
            if ref == A:
                # runs on the loop right after this drainer returns, before its done-callback
                asyncio.get_running_loop().call_soon(queue.add, B, None, "late")
            return False

        queue = WorkQueue(work, workers=1)
        queue.add(A, trigger="added")
        for _ in range(20):
            await asyncio.sleep(0)
        await queue.stop()
        return calls

    assert run(scenario()) == ["a", "b"]
