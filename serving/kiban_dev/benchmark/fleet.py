"""Discrete-event simulation of a replica fleet under one autoscaling policy, in simulated time.

Each replica is the simulator's own engine (`kiban_serving.sim.engine.Engine`), so the
benchmark and the simulator server cannot disagree about how a vLLM replica behaves.

Fleet semantics (docs/benchmark.md says why):
  * Load balancer: least outstanding requests over READY replicas, ties to the oldest replica
    (kiban.gateway.routing.least_outstanding, the rule the Kiban gateway routes with).
    With no ready replica, requests wait in a front queue at the proxy; their TTFT includes
    that wait. `router_queue=True` also holds requests while every ready replica already has
    max_num_seqs outstanding (a central queue; with max_num_seqs=1 this is exactly M/M/c).
  * Cold start: a new replica is billed from the moment it is requested and serves nothing
    for `cold_start_s` (scheduling plus model load).
  * Scale-down: replicas still starting are cancelled first (newest first, as a ReplicaSet
    does), then the ready replicas with the fewest outstanding requests. A removed ready
    replica drains: it takes no new requests, finishes what it holds, and is billed until its
    last request finishes. No request is ever dropped.
  * Warm-up: policies observe from t=0 but their decisions apply only from `warmup_s`, so
    each starts with full windows of history, as an autoscaler in production has.
  * What a policy sees: a peer gets a FleetObservation (its own documented signals, computed
    from the fleet's counters and gauges). A policy with `observes = "operator"` (Kiban) gets an
    OperatorView instead: a Prometheus stand-in (kiban_dev.benchmark.promql) answering PromQL
    from every serving replica's vLLM series (vllm_series.py) scraped every 15 s, the replica
    counts the Deployment reports, and its pods' creation and Ready times. Nothing else.
  * GPU-seconds: per replica, (gone - requested) x GPUs per replica, cut at the horizon, the
    same for every policy (the trace's end rounded up to a whole billing interval).
Time moves only from event to event (arrivals, replica readiness, policy ticks, completions);
the engine itself jumps over runs of identical decode steps.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from kiban.autoscale.collector import PrometheusQuery
from kiban.capacity.engine_profile import EngineProfile
from kiban.gateway.routing import least_outstanding
from kiban_dev.benchmark.observe import (
    ITL_BUCKETS_S,
    TTFT_BUCKETS_S,
    Counters,
    FleetObservation,
    Gauges,
    observe,
)
from kiban_dev.benchmark.promql import PromQLStandIn, SampleStore
from kiban_dev.benchmark.traces import Trace
from kiban_dev.benchmark.vllm_series import SCRAPE_INTERVAL_S, ReplicaSeries, max_model_len
from kiban_serving.sim.engine import Engine, FinishedRequest

STARTING, READY, DRAINING, GONE = "starting", "ready", "draining", "gone"
DRAIN_STEP_S = 0.5


def _outstanding(replica: Replica) -> int:
    return replica.outstanding


class Policy(Protocol):
    """An autoscaler: every `interval_s` it sees one observation and names a replica count.

    `observes` (optional, default "fleet"): "fleet" gets a FleetObservation, "operator" an
    OperatorView (what the operator has in production)."""

    name: str
    interval_s: float

    def desired_replicas(self, obs: FleetObservation) -> int: ...


@dataclass(frozen=True)
class OperatorView:
    """What Kiban's operator has at one tick: Prometheus (here the stand-in over the scraped
    vLLM series), the Deployment's replica counts, and the model's pods (creation, first Ready)."""

    now_s: float
    prometheus: PrometheusQuery
    replicas: int  # spec.scaling.replicas as the fleet applied it (ready + starting)
    ready_replicas: int  # the Deployment's readyReplicas
    pods: tuple[tuple[float, float | None], ...]  # (created, Ready or None) per pod asked for


@dataclass(frozen=True)
class FleetConfig:
    """The fleet's fixed facts, the same for every policy in one comparison."""

    profile: EngineProfile
    gpus_per_replica: int = 1
    cold_start_s: float = 120.0
    initial_replicas: int = 1  # ready at t=0 (a warm start, the same for every policy)
    min_replicas: int = 1
    max_replicas: int = 64
    router_queue: bool = False
    max_num_seqs: int | None = None  # overrides the profile's (tests use 1 for M/M/c)
    billing_interval_s: float = 60.0  # the horizon is the trace end rounded up to this
    warmup_s: float = 0.0  # policies observe from t=0, their decisions apply from here on
    cold_start_jitter: float = 0.0  # each replica's start takes cold_start_s x (1 +- up to this), seeded
    seed: int = 0  # draws the per-replica cold-start jitter
    scrape_interval_s: float = SCRAPE_INTERVAL_S  # Prometheus scrapes every serving replica this often
    scrape_phase_s: float = 0.0  # ... at phase + k x interval (0 <= phase < interval)
    model_name: str = "bench"  # the served model name on the replicas' series
    namespace: str = "bench"

    def __post_init__(self) -> None:
        if self.gpus_per_replica < 1:
            raise ValueError(f"gpus_per_replica must be >= 1, got {self.gpus_per_replica!r}")
        if self.cold_start_s < 0:
            raise ValueError(f"cold_start_s must be >= 0, got {self.cold_start_s!r}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas!r}, {self.max_replicas!r}"
            )
        if not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(f"initial_replicas must be within [min_replicas, max_replicas], got {self.initial_replicas!r}")
        if self.billing_interval_s <= 0:
            raise ValueError(f"billing_interval_s must be > 0, got {self.billing_interval_s!r}")
        if not 0 <= self.cold_start_jitter < 1:
            raise ValueError(f"cold_start_jitter must be in [0, 1), got {self.cold_start_jitter!r}")
        if not self.scrape_interval_s > 0 or not 0 <= self.scrape_phase_s < self.scrape_interval_s:
            raise ValueError(f"need scrape_interval_s > 0 and 0 <= scrape_phase_s < it, got "
                             f"{self.scrape_interval_s!r}, {self.scrape_phase_s!r}")

    def replica_cold_start_s(self, index: int) -> float:
        """The cold start of the fleet's replica number `index` (seeded, the same for every policy)."""
        if not self.cold_start_jitter:
            return self.cold_start_s
        u = random.Random(f"kiban-fleet-{self.seed}-{index}").uniform(-1.0, 1.0)
        return self.cold_start_s * (1.0 + self.cold_start_jitter * u)

    def horizon_s(self, trace: Trace) -> float:
        """Where billing stops: the trace end rounded up to whole billing intervals."""
        intervals = max(1, math.ceil(trace.duration_s / self.billing_interval_s + 1e-9))
        return intervals * self.billing_interval_s


@dataclass(eq=False)
class Replica:
    index: int
    engine: Engine
    requested_s: float
    ready_s: float
    state: str = STARTING
    outstanding: int = 0
    gone_s: float | None = None
    no_finish_before_s: float = -math.inf  # see Fleet._refresh_bound
    series: ReplicaSeries | None = None  # its vLLM series (only when a policy observes the operator's way)
    scraped: bool = False  # Prometheus has samples of it (so its going away writes staleness markers)


@dataclass
class FleetResult:
    """What one policy did to one trace: per-request latencies and the replica timeline."""

    policy: str
    trace: str
    horizon_s: float
    gpu_seconds: float
    ttft_s: np.ndarray  # per request, arrival order
    queue_s: np.ndarray  # arrival to first scheduled on an engine (front queue + engine queue)
    tpot_s: np.ndarray  # per request mean time per output token after the first
    timeline: list[tuple[float, int, int]]  # (time, replicas requested, ready) at each change
    scale_events: int  # decisions that changed the replica count
    max_replicas: int
    aborted: bool = False  # stopped early: more TTFT misses than `miss_budget` allowed

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600.0


@dataclass
class _Metrics:
    """Cumulative counters, updated as requests finish (vLLM observes at request end)."""

    arrivals: int = 0
    inflight_area: float = 0.0
    finished: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_counts: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BUCKETS_S) + 1))
    itl_counts: list[int] = field(default_factory=lambda: [0] * (len(ITL_BUCKETS_S) + 1))
    ttft_sum: float = 0.0
    itl_sum: float = 0.0

    def snapshot(self, now_s: float) -> Counters:
        return Counters(
            time_s=now_s,
            arrivals=self.arrivals,
            inflight_area=self.inflight_area,
            first_tokens=self.finished,
            finished=self.finished,
            prompt_tokens_finished=self.prompt_tokens,
            output_tokens_finished=self.output_tokens,
            ttft_bucket_counts=tuple(np.cumsum(self.ttft_counts).tolist()),
            itl_bucket_counts=tuple(np.cumsum(self.itl_counts).tolist()),
            ttft_sum_s=self.ttft_sum,
            itl_sum_s=self.itl_sum,
        )


class _MissBudgetSpent(Exception):
    """Raised inside a run once it can no longer meet its SLO attainment."""


@dataclass(frozen=True)
class MissBudget:
    """Stop a run as soon as more than `misses` requests have a TTFT above `slo_ttft_s`.

    Searches (the oracle, the static fleet) only need to know pass or fail, and an
    overloaded fleet is the slowest thing to simulate, so failing runs end early.
    """

    slo_ttft_s: float
    misses: int
    attainable: np.ndarray | None = None  # per request: counted at all (None: every request)


class Fleet:
    """One simulation run: a trace, a fleet configuration and one policy (or none: static)."""

    def __init__(self, trace: Trace, config: FleetConfig, policy: Policy | None = None,
                 on_progress: Callable[[float], None] | None = None,
                 miss_budget: MissBudget | None = None, scrape_at: Sequence[float] | None = None) -> None:
        self.miss_budget = miss_budget
        # explicit scrape times (sorted) instead of every scrape_interval_s from the phase; they
        # turn the replicas' vLLM series on without a policy (the exporter's own test uses them)
        self.scrape_at = None if scrape_at is None else sorted(float(t) for t in scrape_at)
        self._misses = 0
        self.trace = trace
        self.config = config
        self.policy = policy
        self.on_progress = on_progress
        self.horizon_s = config.horizon_s(trace)
        self.replicas: list[Replica] = []
        self._starting: list[tuple[float, int]] = []  # heap of (ready_s, index)
        self._pending: list[tuple[float, int, int, FinishedRequest]] = []  # heap of completions
        self._front: list[int] = []  # request indices held at the proxy (FIFO)
        self._front_head = 0
        self._owner: dict[int, Replica] = {}
        self._metrics = _Metrics()
        self._inflight = 0
        self._last_area_s = 0.0
        n = len(trace)
        self.ttft = np.full(n, np.nan)
        self.queue = np.full(n, np.nan)
        self.tpot = np.full(n, np.nan)
        self.timeline: list[tuple[float, int, int]] = []
        self.scale_events = 0
        self.max_seen = 0
        self._max_num_seqs = config.max_num_seqs or config.profile.max_num_seqs
        p = config.profile
        self._min_step_s = min(p.alpha_ms + p.beta_ms, p.gamma_ms + p.delta_ms) / 1e3
        self.operator_view = getattr(policy, "observes", "fleet") == "operator"
        exported = self.operator_view or self.scrape_at is not None
        self.store: SampleStore | None = SampleStore() if exported else None
        self.prometheus = PromQLStandIn(self.store) if self.store is not None else None
        self._context_tokens = max_model_len(p.kv_cache_tokens)

    # ------------------------------------------------------------------ replicas

    def _new_replica(self, now_s: float, ready_s: float) -> Replica:
        engine = Engine(self.config.profile, max_num_seqs=self._max_num_seqs)
        replica = Replica(len(self.replicas), engine, requested_s=now_s, ready_s=ready_s)
        if self.store is not None:
            index = replica.index
            labels = {"namespace": self.config.namespace, "pod": f"{self.config.model_name}-{index}",
                      "instance": f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}:8000",
                      "job": f"{self.config.namespace}/{self.config.model_name}"}
            replica.series = ReplicaSeries(self.store, labels, self.config.model_name, self._context_tokens)
        self.replicas.append(replica)
        if ready_s <= now_s:
            replica.state = READY
        else:
            heapq.heappush(self._starting, (ready_s, replica.index))
        return replica

    def _active(self) -> list[Replica]:
        return [r for r in self.replicas if r.state in (STARTING, READY)]

    def _ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == READY]

    def _record_timeline(self, now_s: float) -> None:
        active = self._active()
        ready = sum(1 for r in active if r.state == READY)
        self.max_seen = max(self.max_seen, len(active))
        if self.timeline and self.timeline[-1][0] == now_s:
            self.timeline[-1] = (now_s, len(active), ready)
        else:
            self.timeline.append((now_s, len(active), ready))

    def scale_to(self, desired: int, now_s: float) -> None:
        """Add cold-starting replicas or remove (cancel, then drain) the idle-most ones."""
        desired = max(self.config.min_replicas, min(self.config.max_replicas, int(desired)))
        active = self._active()
        if desired == len(active):
            return
        self.scale_events += 1
        if desired > len(active):
            for _ in range(desired - len(active)):
                self._new_replica(now_s, now_s + self.config.replica_cold_start_s(len(self.replicas)))
        else:
            surplus = len(active) - desired
            starting = sorted((r for r in active if r.state == STARTING), key=lambda r: -r.index)
            ready = sorted((r for r in active if r.state == READY), key=lambda r: (r.outstanding, -r.index))
            for replica in (starting + ready)[:surplus]:
                if replica.state == STARTING or replica.outstanding == 0:
                    replica.state, replica.gone_s = GONE, now_s
                else:
                    replica.state = DRAINING
        self._record_timeline(now_s)

    # ------------------------------------------------------------------ requests

    def _account_inflight(self, now_s: float) -> None:
        self._metrics.inflight_area += self._inflight * (now_s - self._last_area_s)
        self._last_area_s = now_s

    def _pick(self) -> Replica | None:
        # the gateway's own rule (kiban.gateway.routing): least outstanding, ties to the oldest
        best = least_outstanding([r for r in self.replicas if r.state == READY], _outstanding)
        if best is not None and self.config.router_queue and best.outstanding >= self._max_num_seqs:
            return None
        return best

    def _dispatch(self, request: int, now_s: float) -> bool:
        replica = self._pick()
        if replica is None:
            return False
        trace = self.trace
        if replica.outstanding and replica.engine.clock_s < now_s:
            # Bring the engine up to now first, so it can jump its decode steps up to here.
            # Only this replica's count can drop by it, so it stays the least loaded.
            self._advance_replica(replica, now_s)
            self._release(now_s)
        replica.engine.submit(
            str(request), int(trace.prompt_tokens[request]), int(trace.output_tokens[request]), now_s
        )
        replica.outstanding += 1
        self._owner[request] = replica
        # a request of `out` tokens needs `out` engine steps, none shorter than the shortest step
        bound = now_s + int(trace.output_tokens[request]) * self._min_step_s
        replica.no_finish_before_s = min(replica.no_finish_before_s, bound)
        self.queue[request] = now_s - trace.arrival_s[request]  # front-queue part, engine adds its own
        return True

    def _drain_front(self, now_s: float) -> list[Replica]:
        """Hand held requests out while a replica will take them; returns who received."""
        received = []
        while self._front_head < len(self._front):
            request = self._front[self._front_head]
            if not self._dispatch(request, now_s):
                break
            received.append(self._owner[request])
            self._front_head += 1
        if self._front_head == len(self._front):
            self._front, self._front_head = [], 0
        return received

    def _arrive(self, request: int, now_s: float) -> None:
        self._account_inflight(now_s)
        self._metrics.arrivals += 1
        self._inflight += 1
        if self._front_head < len(self._front) or not self._dispatch(request, now_s):
            self._front.append(request)

    def _finish(self, done: FinishedRequest) -> None:
        request = int(done.request_id)
        arrival = self.trace.arrival_s[request]
        replica = self._owner.pop(request)
        replica.outstanding -= 1
        self._account_inflight(done.finished_s)
        self._inflight -= 1
        ttft = done.first_token_s - arrival
        tpot = done.mean_itl_s
        self.ttft[request] = ttft
        self.queue[request] += done.queue_s
        self.tpot[request] = tpot
        m = self._metrics
        m.finished += 1
        m.prompt_tokens += done.prompt_tokens
        m.output_tokens += done.output_tokens
        m.ttft_counts[bisect_left(TTFT_BUCKETS_S, ttft)] += 1
        m.itl_counts[bisect_left(ITL_BUCKETS_S, tpot)] += 1
        m.ttft_sum += ttft
        m.itl_sum += tpot
        if replica.series is not None:
            replica.series.finished(done)
        budget = self.miss_budget
        if budget is not None and ttft > budget.slo_ttft_s and (budget.attainable is None or budget.attainable[request]):
            self._misses += 1
            if self._misses > budget.misses:
                raise _MissBudgetSpent
        if replica.state == DRAINING and replica.outstanding == 0:
            replica.state, replica.gone_s = GONE, done.finished_s

    def _advance_engines(self, now_s: float, every: bool = False) -> None:
        """Run busy engines up to now_s and settle the completions that happened by then.

        Only engines that could have finished a request by now_s are run (every=True runs all,
        for gauges): the result is the same, the cost is not.
        """
        for replica in self.replicas:
            if (
                replica.outstanding
                and replica.state != STARTING
                and (every or replica.no_finish_before_s <= now_s)
            ):
                self._advance_replica(replica, now_s)
        self._release(now_s)

    def _advance_replica(self, replica: Replica, now_s: float) -> None:
        for done in replica.engine.advance_to(now_s):
            heapq.heappush(self._pending, (done.finished_s, replica.index, int(done.request_id), done))
        replica.no_finish_before_s = self._no_finish_before(replica.engine)

    def _release(self, now_s: float) -> None:
        """Settle the completions that happened by now_s, in time order.

        With a router queue, a completion frees a slot at its own time: held requests are
        handed out then, and the receiving engine is run on to now_s at once. That is exact
        when a replica takes one request at a time (max_num_seqs=1, the M/M/c check) and
        otherwise approximate within one gap between fleet events.
        """
        pending = self._pending
        while pending and pending[0][0] <= now_s:
            finished_s, _, _, done = heapq.heappop(pending)
            self._finish(done)
            if self.config.router_queue and self._front_head < len(self._front):
                for replica in self._drain_front(finished_s):
                    self._advance_replica(replica, now_s)

    def _no_finish_before(self, engine: Engine) -> float:
        """A lower bound on the engine's next completion: every request still needs
        (target - emitted) more steps, each at least the shortest step long.

        It reads the engine's request lists without changing them; an engine without them
        gets -inf (advance it at every event), so the bound only ever saves work, never
        changes a result.
        """
        requests = getattr(engine, "_running", None)
        waiting = getattr(engine, "_waiting", None)
        if requests is None or waiting is None:
            return -math.inf
        fewest = math.inf
        for group in (requests, waiting):
            for req in group:
                left = req.output_target - req.num_output
                if left < fewest:
                    fewest = left
        if fewest == math.inf:
            return math.inf
        return engine.clock_s + (fewest - 1) * self._min_step_s

    # ------------------------------------------------------------------ observation

    def gauges(self) -> Gauges:
        ready = self._ready()
        return Gauges(
            running=tuple(r.engine.num_running for r in ready),
            waiting=tuple(r.engine.num_waiting for r in ready),
            kv_usage=tuple(r.engine.kv_usage for r in ready),
            replicas=len(self._active()),
            ready_replicas=len(ready),
            proxy_inflight=self._inflight,
            front_queue=len(self._front) - self._front_head,
        )

    def scrape(self, now_s: float) -> None:
        """Prometheus scrapes every serving replica (ready, or draining what it holds); a replica
        that went away since its last scrape gets staleness markers. Starting replicas have no
        vLLM server up yet, so nothing to scrape."""
        self._advance_engines(now_s, every=True)
        settling: dict[int, list[FinishedRequest]] = {}
        for _, index, _, done in self._pending:  # finished in the engine beyond now_s, not settled yet
            settling.setdefault(index, []).append(done)
        for replica in self.replicas:
            if replica.series is None:
                continue
            if replica.state in (READY, DRAINING):
                replica.series.scrape(self.store, now_s, replica.engine, settling.get(replica.index, ()))
                replica.scraped = True
            elif replica.state == GONE and replica.scraped:
                self.store.drop(replica.series.target, now_s)
                replica.scraped = False
                replica.series = None  # nothing of it is read again

    def pods(self) -> tuple[tuple[float, float | None], ...]:
        """(created, Ready or None) of the replicas asked for and not removed, as the operator sees
        its pods; the warm start's replicas, Ready from the start, tell nothing and are left out."""
        return tuple((r.requested_s, None if r.state == STARTING else r.ready_s)
                     for r in self.replicas if r.state in (STARTING, READY) and r.ready_s > r.requested_s)

    # ------------------------------------------------------------------ the run

    def run(self) -> FleetResult:
        try:
            self._run()
        except _MissBudgetSpent:
            return self._result(aborted=True)
        return self._result()

    def _run(self) -> None:
        trace, config = self.trace, self.config
        for _ in range(config.initial_replicas):
            self._new_replica(0.0, 0.0)
        self._record_timeline(0.0)
        arrivals = trace.arrival_s
        n = len(trace)
        interval = self.policy.interval_s if self.policy is not None else math.inf
        next_tick = interval
        scrapes = iter(self.scrape_at) if self.scrape_at is not None else None
        if scrapes is not None:
            next_scrape = next(scrapes, math.inf)
        else:
            next_scrape = config.scrape_phase_s if self.operator_view else math.inf
        previous = self._metrics.snapshot(0.0)
        i = 0
        progress_every = max(1, n // 200)
        while True:
            t_arrival = arrivals[i] if i < n else math.inf
            t_ready = self._starting[0][0] if self._starting else math.inf
            t_tick = next_tick if next_tick <= self.horizon_s else math.inf
            t_scrape = next_scrape if next_scrape <= self.horizon_s else math.inf
            now = min(t_arrival, t_ready, t_tick, t_scrape)
            if now == math.inf:
                break
            self._advance_engines(now)
            if t_scrape == now:
                self.scrape(now)
                next_scrape = next(scrapes, math.inf) if scrapes is not None else now + config.scrape_interval_s
            elif t_ready == now:
                _, index = heapq.heappop(self._starting)
                replica = self.replicas[index]
                if replica.state == STARTING:
                    replica.state = READY
                    self._record_timeline(now)
                    self._drain_front(now)
            elif t_arrival == now:
                self._arrive(i, now)
                i += 1
                if self.on_progress is not None and i % progress_every == 0:
                    self.on_progress(now)
            elif self.operator_view and self.policy is not None:
                view = OperatorView(now, self.prometheus, len(self._active()), len(self._ready()), self.pods())
                desired = self.policy.desired_replicas(view)
                if now >= config.warmup_s:
                    self.scale_to(desired, now)
                next_tick = now + interval
            else:
                self._advance_engines(now, every=True)
                self._account_inflight(now)
                current = self._metrics.snapshot(now)
                obs = observe(previous, current, self.gauges())
                previous = current
                desired = self.policy.desired_replicas(obs)
                if now >= config.warmup_s:
                    self.scale_to(desired, now)
                next_tick = now + interval
        self._finish_all()

    def _finish_all(self) -> None:
        """After the last event, let every engine finish what it holds, in half-second steps
        so that a router queue still hands requests out at (nearly) the right time."""
        now = self._last_area_s
        while self._inflight:
            if self._front_head < len(self._front) and not self._ready():
                raise RuntimeError("requests are stranded at the proxy with no replica to serve them")
            now += DRAIN_STEP_S
            self._advance_engines(now, every=True)
            self._drain_front(now)

    def _result(self, aborted: bool = False) -> FleetResult:
        horizon = self.horizon_s
        seconds = 0.0
        for replica in self.replicas:
            end = replica.gone_s if replica.gone_s is not None else horizon
            seconds += max(0.0, min(end, horizon) - replica.requested_s)
        return FleetResult(
            policy=self.policy.name if self.policy is not None else f"static-{self.config.initial_replicas}",
            trace=self.trace.name,
            horizon_s=horizon,
            gpu_seconds=seconds * self.config.gpus_per_replica,
            ttft_s=self.ttft,
            queue_s=self.queue,
            tpot_s=self.tpot,
            timeline=self.timeline,
            scale_events=self.scale_events,
            max_replicas=self.max_seen,
            aborted=aborted,
        )


def simulate(trace: Trace, config: FleetConfig, policy: Policy | None = None,
             on_progress: Callable[[float], None] | None = None,
             miss_budget: MissBudget | None = None) -> FleetResult:
    """Replay `trace` on a fleet resized by `policy` (a fixed fleet when policy is None).

    With a miss budget the run may stop early (result.aborted): it then failed its SLO and
    its numbers cover only the part simulated.
    """
    return Fleet(trace, config, policy, on_progress, miss_budget).run()


def allowed_misses(requests: int, attainment: float) -> int:
    """How many requests may miss the SLO while `attainment` of them still meet it."""
    return int(math.floor(requests * (1.0 - attainment) + 1e-9))
