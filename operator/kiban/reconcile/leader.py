"""Leader election on a coordination.k8s.io/v1 Lease, as Kubernetes' own controllers do it.

Why not kopf's peering: it needs its own CRDs, is off unless asked for (two replicas started
with default flags both acted), and a standby took 33.8 s to act after the active one died.
Here every `kiban run` is a candidate, whatever its flags; exactly one holds the Lease and acts
(reconciles, autoscales, resyncs, posts Events); the others keep their caches warm and wait.

The algorithm is client-go's (tools/leaderelection): the holder renews every `retry_s`; a
candidate takes the Lease over once it has seen the same record unchanged for `duration_s` on
its *own* clock (never comparing clocks across machines); every write replaces the Lease
guarded by its resourceVersion, so of two candidates racing the API server lets one win. A
holder that could not renew for `renew_deadline_s` (< duration_s) stops acting before any
candidate may take over. On a clean exit the holder releases the Lease (empty holder), so a
standby takes over at its next try. With the defaults (10 s, 7 s, 2 s) a standby acts within
about 12 s of the leader's death.

`decide` is pure; `LeaderElector` runs it in a loop with the Lease I/O on a thread of its own,
so a burst of reconcile writes in the I/O pool never delays a renewal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from kiban.reconcile.logfmt import kv

log = logging.getLogger("kiban.leader")

DEFAULT_LEASE_NAME = "kiban-operator"
CREATE, RENEW, TAKE, WAIT = "create", "renew", "take", "wait"


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str = DEFAULT_LEASE_NAME
    duration_s: float = 10.0
    renew_deadline_s: float = 7.0
    retry_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_s < self.renew_deadline_s < self.duration_s:
            raise ValueError("need 0 < retry_s < renew_deadline_s < duration_s, got "
                             f"{self.retry_s}, {self.renew_deadline_s}, {self.duration_s}")


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says (spec) and its resourceVersion."""

    holder: str
    duration_s: float
    renew_time: str | None
    acquire_time: str | None
    transitions: int
    resource_version: str

    @property
    def version(self) -> tuple:
        """What changes whenever the holder renews: a candidate times the Lease out from when it
        last saw this change."""
        return (self.holder, self.renew_time, self.resource_version)


def default_identity() -> str:
    """The pod name in a cluster (KIBAN_POD_NAME, else the hostname) plus a random suffix:
    a restarted container is a new candidate, as in client-go."""
    base = os.environ.get("KIBAN_POD_NAME") or socket.gethostname() or "kiban"
    return f"{base}_{uuid.uuid4().hex[:8]}"


def micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_lease(obj: Mapping[str, Any] | None) -> LeaseRecord | None:
    if obj is None:
        return None
    spec = obj.get("spec") or {}
    return LeaseRecord(
        holder=spec.get("holderIdentity") or "",
        duration_s=float(spec.get("leaseDurationSeconds") or 0),
        renew_time=spec.get("renewTime"),
        acquire_time=spec.get("acquireTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str((obj.get("metadata") or {}).get("resourceVersion") or ""),
    )


def lease_spec(identity: str, now: datetime, duration_s: float, *, acquire_time: str | None = None,
               transitions: int = 0) -> dict[str, Any]:
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration_s)),
        "acquireTime": acquire_time or micro_time(now),
        "renewTime": micro_time(now),
        "leaseTransitions": transitions,
    }


def decide(record: LeaseRecord | None, identity: str, seen_unchanged_s: float) -> str:
    """What a candidate does with the Lease as read (pure).

    `seen_unchanged_s`: how long, on this candidate's own clock, the record has looked the
    same. CREATE: there is none; RENEW: it is ours; TAKE: nobody holds it, or its holder has
    not renewed for a whole lease duration; WAIT: someone else holds it.
    """
    if record is None:
        return CREATE
    if record.holder == identity:
        return RENEW
    if not record.holder or seen_unchanged_s >= record.duration_s:
        return TAKE
    return WAIT


class LeaderElector:
    """Runs the election until cancelled; `is_leader` says whether this replica may act.

    `on_started` / `on_stopped` are awaited on the event loop at each change of leadership.
    """

    def __init__(self, writer: Any, settings: LeaseSettings, *, identity: str | None = None,
                 on_started: Callable[[], Awaitable[None]] | None = None,
                 on_stopped: Callable[[], Awaitable[None]] | None = None,
                 on_renewed_after_failure: Callable[[], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.writer, self.settings = writer, settings
        self.identity = identity or default_identity()
        self.on_started, self.on_stopped = on_started, on_stopped
        self.on_renewed_after_failure = on_renewed_after_failure
        self.clock = clock
        self.is_leader = False
        self._observed: tuple | None = None  # the record version last seen
        self._observed_at = 0.0
        self._renewed_at: float | None = None
        self._failing = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kiban-lease")

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args))

    def _seen_unchanged_s(self, record: LeaseRecord | None) -> float:
        now = self.clock()
        version = record.version if record else None
        if version != self._observed:
            self._observed, self._observed_at = version, now
        return now - self._observed_at

    async def try_once(self) -> bool:
        """One round: read the Lease, then create, renew or take it, or wait. True when this
        replica holds the Lease afterwards."""
        settings = self.settings
        record = parse_lease(await self._io(self.writer.read_lease, settings.namespace, settings.name))
        step = decide(record, self.identity, self._seen_unchanged_s(record))
        now = datetime.now(UTC)
        if step == WAIT:
            return False
        if step == CREATE:
            spec = lease_spec(self.identity, now, settings.duration_s)
            await self._io(self.writer.create_lease, settings.namespace, settings.name, spec)
        else:
            assert record is not None
            mine = step == RENEW
            spec = lease_spec(self.identity, now, settings.duration_s,
                              acquire_time=record.acquire_time if mine else None,
                              transitions=record.transitions if mine else record.transitions + 1)
            await self._io(self.writer.replace_lease, settings.namespace, settings.name, record.resource_version, spec)
        return True

    async def run(self) -> None:
        settings = self.settings
        try:
            while True:
                try:
                    held = await self.try_once()
                except ApiException as exc:
                    held = False
                    if exc.status != 409:  # 409: another replica won this round
                        self._note_failure(f"{exc.status} {exc.reason}")
                except Exception as exc:  # noqa: BLE001 - no connection: keep trying
                    held = False
                    self._note_failure(f"{type(exc).__name__}: {exc}"[:200])
                else:
                    if held and self._failing:
                        self._failing = False
                        if self.is_leader and self.on_renewed_after_failure is not None:
                            await self.on_renewed_after_failure()
                now = self.clock()
                if held:
                    self._renewed_at = now
                    if not self.is_leader:
                        await self._start()
                elif self.is_leader and (self._renewed_at is None or now - self._renewed_at > settings.renew_deadline_s
                                         or not self._failing):
                    # another replica holds it now, or we could not renew within the deadline
                    await self._stop()
                await asyncio.sleep(settings.retry_s)
        finally:
            if self.is_leader:
                await self._stop()
                await self.release()

    def _note_failure(self, why: str) -> None:
        if not self._failing:
            log.warning(kv("Failed to renew or read the leader Lease", lease=self.settings.name,
                           namespace=self.settings.namespace, error=why))
        self._failing = True

    async def _start(self) -> None:
        self.is_leader = True
        log.info(kv("Became the leader", identity=self.identity, lease=self.settings.name,
                    namespace=self.settings.namespace))
        if self.on_started is not None:
            await self.on_started()

    async def _stop(self) -> None:
        self.is_leader = False
        log.warning(kv("Stopped leading", identity=self.identity, lease=self.settings.name))
        if self.on_stopped is not None:
            await self.on_stopped()

    async def release(self) -> None:
        """Hand the Lease back (empty holder) so a standby takes over at its next try."""
        try:
            record = parse_lease(await self._io(self.writer.read_lease, self.settings.namespace, self.settings.name))
            if record is None or record.holder != self.identity:
                return
            spec = lease_spec("", datetime.now(UTC), 1, acquire_time=record.acquire_time,
                              transitions=record.transitions)
            await self._io(self.writer.replace_lease, self.settings.namespace, self.settings.name,
                           record.resource_version, spec)
            log.info(kv("Released the leader Lease", identity=self.identity, lease=self.settings.name))
        except Exception as exc:  # noqa: BLE001 - the Lease then expires on its own
            log.warning(kv("Failed to release the leader Lease", error=f"{type(exc).__name__}: {exc}"[:200]))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
