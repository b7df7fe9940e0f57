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


def test_retries_back_off_exponentially_with_jitter_up_to_a_cap():
    from kiban.reconcile.queue import retry_delay

    lowest = [retry_delay(n, 2.0, 300.0, rng=lambda: 0.0) for n in range(1, 11)]
    highest = [retry_delay(n, 2.0, 300.0, rng=lambda: 1.0) for n in range(1, 11)]
    assert highest == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]
    assert lowest == [h / 2 for h in highest]  # jitter spreads each retry over [half, all] of it
    # 100 failures in a row: still capped, never an overflow
    assert retry_delay(100, 2.0, 300.0, rng=lambda: 1.0) == 300.0
    # an hour of a model the API server keeps refusing: ~15 retries, not 720 (every 5 s)
    elapsed, tries = 0.0, 0
    while elapsed < 3600:
        tries += 1
        elapsed += retry_delay(tries, 2.0, 300.0, rng=lambda: 0.5)
    assert tries < 25


def test_failures_grow_the_delay_and_a_success_resets_it():
    async def scenario():
        times, outcomes = [], [True, True, True, False, True]
        loop = asyncio.get_running_loop()

        async def work(ref, indexes, trigger):
            times.append(loop.time())
            return outcomes[len(times) - 1] if len(times) <= len(outcomes) else True

        queue = WorkQueue(work, workers=1, retry_seconds=0.02, max_retry_seconds=1.0)
        queue.add(A, trigger="added")
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(times) >= 4:
                break
        after_three = queue.failures.get(A)
        queue.add(A, trigger="added")  # a new event after the success
        await asyncio.sleep(0.05)
        await queue.stop()
        return times, after_three, queue.failures.get(A)

    times, after_three, final = run(scenario())
    gaps = [b - a for a, b in zip(times, times[1:4])]
    assert after_three is None  # the 4th pass succeeded: the count is reset
    assert gaps[0] >= 0.01 and gaps[1] >= 0.02 and gaps[2] >= 0.04  # each at least half of 0.02·2^n
    assert final >= 1  # failing again counts from one, not from four
    assert final < 4


def test_a_paused_queue_starts_nothing_and_resume_drains_what_came():
    async def scenario():
        calls = []

        async def work(ref, indexes, trigger):
            calls.append(ref[1])
            return False

        queue = WorkQueue(work, workers=4, paused=True)
        queue.add(A, trigger="added")
        queue.add(B, trigger="added")
        await asyncio.sleep(0.02)
        before = list(calls)
        queue.resume()
        await asyncio.sleep(0.02)
        queue.pause()
        queue.add(("ns", "c"), trigger="added")
        await asyncio.sleep(0.02)
        await queue.stop()
        return before, calls

    before, calls = run(scenario())
    assert before == [] and calls == ["a", "b"]
