"""The oracle: a clairvoyant, instantly scaling fleet, the floor every real policy sits above.

Definition (docs/benchmark.md has the argument): split the trace into intervals of length
delta (60 s). For interval i, c_i is the fewest replicas (at least min_replicas) such that the
requests arriving in that interval, served alone by c_i replicas that are ready and empty at
its start (no cold start, no carry-over from earlier intervals), meet the TTFT SLO for at
least `attainment` of them. Cost = sum(c_i) x delta x GPUs per replica.

Replays use the same fleet simulation and engine as the policies. Fewer replicas never help
a window meet its SLO, so c_i is found by walking from the previous interval's count.

`ClairvoyantSchedule` plays those counts on a real fleet, each replica ordered one cold start
before the interval that needs it: the cost of perfect foresight once replicas take time to
start, i.e. how close to the oracle any policy could get.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from kiban_dev.benchmark.fleet import FleetConfig, MissBudget, allowed_misses, simulate
from kiban_dev.benchmark.observe import FleetObservation
from kiban_dev.benchmark.traces import Trace


@dataclass(frozen=True)
class OracleResult:
    """Per-interval replica counts and what they cost."""

    interval_s: float
    counts: tuple[int, ...]
    gpu_seconds: float
    ttft_s: np.ndarray  # per request, from the interval replays

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600.0


class SloUnattainable(ValueError):
    """No replica count meets the SLO for the attainable requests of some interval."""


def attainment_over(ttft_s: np.ndarray, slo_ttft_s: float, attainable: np.ndarray | None) -> float:
    """Share of the attainable requests (all when None) whose TTFT met the target; 1 when none is."""
    met = ttft_s <= slo_ttft_s
    if attainable is not None:
        met = met[attainable]
    return float(np.mean(met)) if len(met) else 1.0


def window_meets(window: Trace, replicas: int, config: FleetConfig, slo_ttft_s: float, attainment: float,
                 attainable: np.ndarray | None = None) -> tuple[bool, np.ndarray]:
    """Do `replicas` warm, empty replicas serve this window's attainable requests within the SLO?"""
    fixed = replace(config, initial_replicas=replicas, min_replicas=replicas, max_replicas=replicas)
    counted = len(window) if attainable is None else int(np.sum(attainable))
    budget = MissBudget(slo_ttft_s, allowed_misses(counted, attainment), attainable)
    result = simulate(window, fixed, miss_budget=budget)
    if result.aborted:
        return False, result.ttft_s
    return attainment_over(result.ttft_s, slo_ttft_s, attainable) >= attainment, result.ttft_s


def fewest_replicas(meets, floor: int, ceiling: int, hint: int):
    """Smallest c in [floor, ceiling] with meets(c) true, assuming more replicas never hurt.

    Walks down from a passing hint, or gallops up (doubling) from a failing one and then
    bisects, so a big jump costs O(log) runs. Returns (c, what meets(c) returned).
    """
    c = max(floor, min(hint, ceiling))
    ok, payload = meets(c)
    if ok:
        while c > floor:
            ok_less, payload_less = meets(c - 1)
            if not ok_less:
                break
            c, payload = c - 1, payload_less
        return c, payload
    low = c  # fails
    high = c
    while True:
        if high >= ceiling:
            raise ValueError(f"no replica count up to max_replicas={ceiling} meets the SLO")
        high = min(ceiling, max(high + 1, 2 * high))
        ok, payload = meets(high)
        if ok:
            break
        low = high
    while high - low > 1:
        mid = (low + high) // 2
        ok_mid, payload_mid = meets(mid)
        if ok_mid:
            high, payload = mid, payload_mid
        else:
            low = mid
    return high, payload


def oracle(
    trace: Trace,
    config: FleetConfig,
    slo_ttft_s: float,
    attainment: float = 0.99,
    interval_s: float | None = None,
    attainable: np.ndarray | None = None,
) -> OracleResult:
    """Cheapest per-interval counts meeting the SLO (for the attainable requests: those whose
    prefill alone fits the target) with perfect foresight and instant start."""
    if not 0 < attainment <= 1:
        raise ValueError(f"attainment must be in (0, 1], got {attainment!r}")
    interval_s = config.billing_interval_s if interval_s is None else interval_s
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
    horizon = config.horizon_s(trace)
    intervals = int(round(horizon / interval_s))
    floor = max(1, config.min_replicas)
    counts: list[int] = []
    ttft = np.full(len(trace), np.nan)
    previous = floor
    for i in range(intervals):
        start = i * interval_s
        lo, hi = np.searchsorted(trace.arrival_s, [start, start + interval_s], side="left")
        if hi == lo:
            counts.append(floor)
            continue
        window = trace.window(start, start + interval_s)
        mask = attainable[lo:hi] if attainable is not None else None
        try:
            c, times = fewest_replicas(
                lambda n: window_meets(window, n, config, slo_ttft_s, attainment, mask),
                floor, config.max_replicas, previous,
            )
        except ValueError:
            raise SloUnattainable(
                f"trace {trace.name}: no fleet of up to {config.max_replicas} replicas serves {attainment:.0%} of the "
                f"attainable requests of minute {i} within TTFT {slo_ttft_s * 1000:g} ms "
                "(raise --max-replicas or the target)") from None
        counts.append(c)
        ttft[lo:hi] = times
        previous = c
    gpu_seconds = sum(counts) * interval_s * config.gpus_per_replica
    return OracleResult(interval_s=interval_s, counts=tuple(counts), gpu_seconds=gpu_seconds, ttft_s=ttft)


def check_schedule(counts: tuple[int, ...], interval_s: float, lead_s: float) -> None:
    """A schedule needs counts, a positive interval and a lead that is not negative."""
    if not counts:
        raise ValueError("counts must not be empty")
    if interval_s <= 0 or lead_s < 0:
        raise ValueError(f"need interval_s > 0 and lead_s >= 0, got {interval_s!r}, {lead_s!r}")


def schedule_ahead(counts: tuple[int, ...], interval_s: float, lead_s: float, t: float) -> int:
    """The most replicas any interval overlapping [t, t + lead_s] needs.

    A replica ordered at t is ready at t + lead_s, so asking now for every interval up to
    then orders each one exactly a lead before it is needed, and keeps a replica through a
    dip shorter than a lead (releasing it would only mean ordering it again). Times past the
    last interval read as the last interval.
    """
    check_schedule(counts, interval_s, lead_s)
    last = len(counts) - 1
    first = min(last, max(0, math.floor(t / interval_s + 1e-9)))
    end = min(last, max(0, math.floor((t + lead_s) / interval_s + 1e-9)))
    return max(counts[first:end + 1])


@dataclass(frozen=True)
class ClairvoyantSchedule:
    """The oracle's counts with perfect foresight but real cold starts (a reference, not a peer).

    Asked once per oracle interval, at interval starts; so a lead that is not a whole number
    of intervals is rounded up to one (the next ask would come too late). Stateless: the
    answer depends only on the time.
    """

    counts: tuple[int, ...]
    interval_s: float
    lead_s: float
    name: str = "oracle counts, ordered one cold start ahead (clairvoyant)"

    def __post_init__(self) -> None:
        check_schedule(self.counts, self.interval_s, self.lead_s)

    @property
    def ordering_lead_s(self) -> float:
        return math.ceil(self.lead_s / self.interval_s - 1e-9) * self.interval_s

    def at(self, t: float) -> int:
        return schedule_ahead(self.counts, self.interval_s, self.ordering_lead_s, t)

    def desired_replicas(self, obs: FleetObservation) -> int:
        return self.at(obs.now_s)
