"""The demo's load shape and its bookkeeping (pure: lists in, lists out, no clock, no I/O).

The load is slices of real traces (the Azure LLM conversation and code traces) replayed in
phases: each phase takes the next stretch of its mix's trace, compresses its time axis by
`time_compression` (so a few minutes of demo walk through a longer stretch of the trace and keep
its bursts), then thins or multiplies it to the phase's target rate
(kiban_serving.loadgen.trace.multiply_rate), so the rate rises, peaks and falls while the token
mix stays the trace's own; a phase naming another mix switches the request mix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from kiban_serving.loadgen.client import RequestResult
from kiban_serving.loadgen.report import percentile
from kiban_serving.loadgen.trace import TraceRequest, compress_time, multiply_rate, poisson_requests


DEFAULT_MIX = "conv"


@dataclass(frozen=True)
class Phase:
    """`duration_s` seconds of demo time at about `rate_rps` requests per second of `mix`'s trace."""

    duration_s: float
    rate_rps: float
    mix: str = DEFAULT_MIX
    poisson: bool = False  # Poisson arrivals carrying the trace's token counts in order, not its timing

    def __post_init__(self) -> None:
        if not (isinstance(self.duration_s, (int, float)) and self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise ValueError(f"phase duration_s must be a positive number, got {self.duration_s!r}")
        if not (isinstance(self.rate_rps, (int, float)) and self.rate_rps > 0 and math.isfinite(self.rate_rps)):
            raise ValueError(f"phase rate_rps must be a positive number, got {self.rate_rps!r}")


def parse_phases(text: str) -> tuple[Phase, ...]:
    """'40:0.3,60:1.5:code' -> (Phase(40, 0.3), Phase(60, 1.5, 'code')); ValueError naming the bad item."""
    phases = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        parts = item.split(":")
        try:
            if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2]):
                raise ValueError
            phases.append(Phase(float(parts[0]), float(parts[1]), *(parts[2:] or [])))
        except ValueError as exc:
            detail = f": {exc}" if str(exc) else ""
            raise ValueError(f"--phases: expected SECONDS:RPS[:MIX] items separated by commas, got {item!r}{detail}") \
                from None
    if not phases:
        raise ValueError("--phases: at least one SECONDS:RPS phase is needed")
    return tuple(phases)


def ramp(trace: Sequence[TraceRequest] | Mapping[str, Sequence[TraceRequest]], phases: Sequence[Phase],
         time_compression: float, seed: int = 0) -> list[TraceRequest]:
    """The demo's request stream: consecutive stretches of each phase's trace (see module doc).

    `trace` is one trace (every phase's mix) or a mapping mix -> trace. Each phase consumes
    duration_s * time_compression seconds of its mix's trace, continuing where that mix's last
    phase stopped; a ValueError says how much trace is needed when one runs out.
    """
    if time_compression <= 0 or not math.isfinite(time_compression):
        raise ValueError(f"time_compression must be a positive number, got {time_compression!r}")
    traces = trace if isinstance(trace, Mapping) else {p.mix: trace for p in phases}
    ordered: dict[str, list[TraceRequest]] = {}
    for mix in dict.fromkeys(p.mix for p in phases):
        if mix not in traces:
            raise ValueError(f"phase mix {mix!r} has no trace; have {', '.join(sorted(traces))}")
        rows = sorted(traces[mix], key=lambda r: r.arrival_s)
        needed = sum(p.duration_s for p in phases if p.mix == mix) * time_compression
        mean_gap = rows[-1].arrival_s / max(len(rows) - 1, 1) if rows else 0.0
        if not rows or rows[-1].arrival_s + mean_gap < needed:  # a trace ends at its last arrival
            have = rows[-1].arrival_s if rows else 0.0
            raise ValueError(f"the {mix} trace covers {have:.0f} s; these phases need {needed:.0f} s of it "
                             f"(lower the time compression or shorten the phases)")
        ordered[mix] = rows
    out: list[TraceRequest] = []
    cursor = {mix: 0.0 for mix in ordered}
    demo_start = 0.0
    for index, phase in enumerate(phases):
        trace_start = cursor[phase.mix]
        if phase.poisson:
            rows = [r for r in ordered[phase.mix] if r.arrival_s >= trace_start]
            arrivals = poisson_requests(phase.rate_rps, phase.duration_s, 1, 1, seed=seed + index)
            if len(arrivals) > len(rows):
                raise ValueError(f"the {phase.mix} trace has {len(rows)} requests left; phase {index} needs "
                                 f"{len(arrivals)}")
            out.extend(replace(row, arrival_s=demo_start + a.arrival_s) for a, row in zip(arrivals, rows))
            if arrivals:
                cursor[phase.mix] = rows[len(arrivals) - 1].arrival_s + 1e-9
            demo_start += phase.duration_s
            continue
        trace_end = trace_start + phase.duration_s * time_compression
        stretch = [replace(r, arrival_s=r.arrival_s - trace_start)
                   for r in ordered[phase.mix] if trace_start <= r.arrival_s < trace_end]
        compressed = compress_time(stretch, time_compression)
        natural_rps = len(compressed) / phase.duration_s
        if natural_rps > 0:
            shaped = multiply_rate(compressed, phase.rate_rps / natural_rps, seed=seed + index)
            out.extend(replace(r, arrival_s=r.arrival_s + demo_start) for r in shaped)
        cursor[phase.mix], demo_start = trace_end, demo_start + phase.duration_s
    return out


def phase_at(phases: Sequence[Phase], time_s: float) -> Phase | None:
    """The phase running at time_s (seconds since the load started), None after the last."""
    start = 0.0
    for phase in phases:
        if start <= time_s < start + phase.duration_s:
            return phase
        start += phase.duration_s
    return None


def gpu_hours(samples: Sequence[tuple[float, int]], end_s: float, gpus_per_replica: int) -> float:
    """GPU-hours of a replica count held from each (time, replicas) sample to the next (steps)."""
    total = 0.0
    for (t, replicas), (t_next, _) in zip(samples, [*samples[1:], (end_s, 0)]):
        total += max(0.0, t_next - t) * replicas * gpus_per_replica
    return total / 3600.0


def windowed_rate(arrivals_s: Sequence[float], end_s: float, window_s: float) -> float:
    """Requests per second among arrivals in (end_s - window_s, end_s]."""
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s!r}")
    return sum(1 for t in arrivals_s if end_s - window_s < t <= end_s) / window_s


def ttft_p95_by_window(results: Sequence[RequestResult], window_s: float) -> list[tuple[float, float, int]]:
    """(window end s, client TTFT p95 ms, requests) for each window with a first token in it.

    A request counts in the window where its first token arrived (sent_s + ttft_s), so the
    series shows what users saw at that moment.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s!r}")
    buckets: dict[int, list[float]] = {}
    for result in results:
        if result.ok and result.ttft_s is not None:
            buckets.setdefault(int((result.sent_s + result.ttft_s) // window_s), []).append(result.ttft_s * 1e3)
    return [((index + 1) * window_s, percentile(values, 95), len(values)) for index, values in sorted(buckets.items())]


@dataclass(frozen=True)
class ScaleEvent:
    """The autoscaler's desired replicas changed between two samples."""

    time_s: float
    from_replicas: int
    to_replicas: int
    reason: str


def scale_events(samples: Sequence[tuple[float, int | None, str | None]]) -> list[ScaleEvent]:
    """ScaleEvents from (time_s, desired replicas, reason) samples, in time order."""
    events: list[ScaleEvent] = []
    previous: int | None = None
    for time_s, desired, reason in samples:
        if desired is None:
            continue
        if previous is not None and desired != previous:
            events.append(ScaleEvent(time_s, previous, desired, reason or ""))
        previous = desired
    return events


_SCALED = re.compile(r"^Scaled from (\d+) to (\d+): (.*)$", re.DOTALL)


def scale_events_from_api(events: Sequence[tuple[float, str]]) -> list[ScaleEvent]:
    """ScaleEvents from the operator's `Scaled` Events ((time_s, message) pairs, any order):
    each scale with the reason the autoscaler gave at that moment (the 5 s sampler may miss a
    decision's own reason, e.g. the wake's, when the next pass rewrites status first)."""
    out = []
    for time_s, message in sorted(events):
        match = _SCALED.match(message or "")
        if match:
            out.append(ScaleEvent(time_s, int(match.group(1)), int(match.group(2)), match.group(3)))
    return out


def no_ready_windows(changes: Sequence[tuple[float, int]], end_s: float) -> list[tuple[float, float]]:
    """The stretches of [0, end_s] in which no replica was ready, from (time, ready count) changes
    in time order (times relative to the load's start; earlier ones set the count at 0 s, and
    with none the count starts at 0: a model applied at zero replicas)."""
    count = 0
    for t, c in changes:
        if t <= 0:
            count = c
    windows: list[tuple[float, float]] = []
    start = 0.0 if count == 0 else None
    for t, c in changes:
        if t <= 0 or t >= end_s:
            continue
        if c == 0 and start is None:
            start = t
        elif c > 0 and start is not None:
            windows.append((start, t))
            start = None
    if start is not None and start < end_s:
        windows.append((start, end_s))
    return windows


def sent_in(results: Sequence[RequestResult], windows: Sequence[tuple[float, float]]) -> list[RequestResult]:
    """The requests sent inside one of `windows` (start inclusive, end exclusive)."""
    return [r for r in results if any(start <= r.sent_s < end for start, end in windows)]
