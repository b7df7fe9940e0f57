"""Leader election on a Lease (kiban.reconcile.leader): the decision is client-go's, timed on the
candidate's own clock; the loop against a fake Lease store shows one holder and a takeover."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes.client.exceptions import ApiException

from kiban.reconcile.leader import (
    CREATE,
    RENEW,
    TAKE,
    WAIT,
    LeaderElector,
    LeaseRecord,
    LeaseSettings,
    decide,
    lease_spec,
    parse_lease,
)


def record(holder: str, duration: float = 10.0) -> LeaseRecord:
    return LeaseRecord(holder, duration, "2026-01-01T00:00:00.000000Z", None, 0, "1")


def test_create_renew_take_or_wait():
    assert decide(None, "a", 0) == CREATE
    assert decide(record("a"), "a", 999) == RENEW
    assert decide(record(""), "a", 0) == TAKE  # released by a clean exit
    assert decide(record("b"), "a", 9.9) == WAIT
    assert decide(record("b"), "a", 10.0) == TAKE  # unrenewed for a whole lease duration, on our clock


def test_settings_refuse_a_deadline_that_would_let_two_act():
    with pytest.raises(ValueError, match="renew_deadline_s"):
        LeaseSettings("ns", duration_s=10, renew_deadline_s=12, retry_s=2)


def test_lease_spec_round_trips():
    from datetime import UTC, datetime

    spec = lease_spec("me", datetime(2026, 1, 1, tzinfo=UTC), 10, transitions=3)
    parsed = parse_lease({"metadata": {"resourceVersion": "7"}, "spec": spec})
    assert (parsed.holder, parsed.duration_s, parsed.transitions, parsed.resource_version) == ("me", 10.0, 3, "7")
    assert spec["renewTime"] == "2026-01-01T00:00:00.000000Z"


class Store:
    """A Lease store with the API server's optimistic concurrency (409 on a stale resourceVersion)."""

    def __init__(self):
        self.obj = None
        self.version = 0
        self.down = False

    def _check(self):
        if self.down:
            raise OSError("connection refused")

    def read_lease(self, namespace, name):
        self._check()
        return None if self.obj is None else {"metadata": {"resourceVersion": str(self.version)}, "spec": dict(self.obj)}

    def create_lease(self, namespace, name, spec):
        self._check()
        if self.obj is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self.version += 1
        self.obj = dict(spec)

    def replace_lease(self, namespace, name, resource_version, spec):
        self._check()
        if resource_version != str(self.version):
            raise ApiException(status=409, reason="Conflict")
        self.version += 1
        self.obj = dict(spec)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_one_holder_and_a_takeover_after_the_lease_duration():
    async def scenario():
        store, clock = Store(), Clock()
        settings = LeaseSettings("ns", duration_s=10, renew_deadline_s=7, retry_s=2)
        a = LeaderElector(store, settings, identity="a", clock=clock)
        b = LeaderElector(store, settings, identity="b", clock=clock)
        assert await a.try_once() is True and await b.try_once() is False
        clock.now = 9.0
        assert await b.try_once() is False  # a has not renewed, but 10 s have not passed on b's clock
        clock.now = 20.0
        assert await b.try_once() is True  # a is dead: b takes over
        assert store.obj["holderIdentity"] == "b" and store.obj["leaseTransitions"] == 1
        assert await a.try_once() is False  # a, back from a pause, finds b holding a fresh lease
        a.shutdown(), b.shutdown()

    asyncio.run(scenario())


def test_the_leader_stops_acting_when_it_cannot_renew_and_leads_again_after():
    async def scenario():
        store = Store()
        started, stopped, recovered = [], [], []
        settings = LeaseSettings("ns", duration_s=0.5, renew_deadline_s=0.3, retry_s=0.05)

        async def on(event):
            event.append(asyncio.get_running_loop().time())

        elector = LeaderElector(store, settings, identity="a", on_started=lambda: on(started),
                                on_stopped=lambda: on(stopped), on_renewed_after_failure=lambda: on(recovered))
        task = asyncio.create_task(elector.run())
        await asyncio.sleep(0.2)
        assert elector.is_leader and len(started) == 1
        store.down = True
        await asyncio.sleep(0.6)
        assert not elector.is_leader and len(stopped) == 1  # within the renew deadline, not the lease
        store.down = False
        await asyncio.sleep(0.3)
        assert elector.is_leader and len(started) == 2
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert store.obj["holderIdentity"] == ""  # released on the way out
        elector.shutdown()

    asyncio.run(scenario())
