"""What an autoscaler can see of the fleet: Prometheus-like counters turned into windows.

The fleet keeps cumulative counters (as vLLM and a proxy export them) and instant gauges.
Every policy tick takes two counter snapshots and the current gauges and builds the same
`FleetObservation`, the way a Prometheus query over `[window]` would: rates from counter
deltas, histograms as bucket deltas, gauges as last values. All pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kiban.capacity.fitting import HistogramWindow
from kiban.capacity.fitting import histogram_quantile as fitting_quantile

# vLLM 0.33's bucket boundaries (seconds) for time_to_first_token and inter_token_latency.
TTFT_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)
ITL_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)


@dataclass(frozen=True)
class Counters:
    """Cumulative fleet counters at one instant (monotone, like Prometheus counters)."""

    time_s: float
    arrivals: int  # requests that reached the proxy
    inflight_area: float  # integral of proxy in-flight requests over time (request-seconds)
    first_tokens: int  # requests that produced their first token
    finished: int  # requests that completed
    prompt_tokens_finished: int  # sum of prompt tokens of finished requests
    output_tokens_finished: int  # sum of output tokens of finished requests
    ttft_bucket_counts: tuple[int, ...]  # cumulative count per TTFT bucket (le), +Inf last
    itl_bucket_counts: tuple[int, ...]  # cumulative count per ITL bucket, per finished request
    ttft_sum_s: float
    itl_sum_s: float


@dataclass(frozen=True)
class Gauges:
    """Instant values at a scrape, per ready replica (vLLM gauges) and at the proxy."""

    running: tuple[int, ...]  # vllm:num_requests_running per ready replica
    waiting: tuple[int, ...]  # vllm:num_requests_waiting per ready replica
    kv_usage: tuple[float, ...]  # vllm:kv_cache_usage_perc per ready replica (0-1)
    replicas: int  # replicas requested (ready, starting; not the draining ones)
    ready_replicas: int
    proxy_inflight: int  # requests at the proxy not yet finished (front queue included)
    front_queue: int  # requests held at the proxy with no replica to take them


@dataclass(frozen=True)
class FleetObservation:
    """One scrape's view of the fleet over the last window; every policy gets the same one."""

    now_s: float
    window_s: float
    arrival_rate_rps: float
    running: tuple[int, ...]
    waiting: tuple[int, ...]
    kv_usage: tuple[float, ...]
    running_total: int
    waiting_total: int
    kv_usage_mean: float
    ttft_buckets_s: tuple[float, ...]
    ttft_bucket_deltas: tuple[int, ...]  # per-bucket (non-cumulative in le) counts in the window
    itl_buckets_s: tuple[float, ...]
    itl_bucket_deltas: tuple[int, ...]
    ttft_mean_s: float | None  # None when no first token in the window
    itl_mean_s: float | None
    mean_prompt_tokens: float | None  # over requests finished in the window
    mean_output_tokens: float | None
    finished_in_window: int
    replicas: int
    ready_replicas: int
    proxy_inflight: int  # instant, KubeAI's signal
    proxy_inflight_avg: float  # time-averaged over the window
    concurrency_per_pod: float  # time-averaged in-flight / ready replicas, Knative's signal
    front_queue: int

    def ttft_quantile_s(self, q: float) -> float | None:
        """histogram_quantile over the window's TTFT buckets (linear within a bucket)."""
        return histogram_quantile(q, self.ttft_buckets_s, self.ttft_bucket_deltas)


def bucket_counts(values: np.ndarray, bounds: tuple[float, ...]) -> np.ndarray:
    """Count of values per bucket (le semantics); one extra bucket for +Inf."""
    index = np.searchsorted(np.asarray(bounds), values, side="left")
    return np.bincount(index, minlength=len(bounds) + 1)


def histogram_quantile(q: float, bounds: tuple[float, ...], counts: tuple[int, ...]) -> float | None:
    """Prometheus' histogram_quantile on per-bucket counts (one more than `bounds`: the +Inf
    bucket), by the operator's own implementation; None when empty."""
    cumulative = np.cumsum(counts).tolist()
    window = HistogramWindow(buckets=tuple(zip((*bounds, math.inf), cumulative)), sum=0.0, count=cumulative[-1])
    return fitting_quantile(window, q)


def window_bucket_counts(earlier: tuple[int, ...], later: tuple[int, ...]) -> tuple[int, ...]:
    """Per-bucket counts in a window from two snapshots of cumulative-in-`le` bucket counters.

    The fleet's counters are cumulative in `le`, as Prometheus exposes them; the window's
    delta is too, so it is de-cumulated here to the per-bucket counts FleetObservation holds.
    """
    window = [c - p for c, p in zip(later, earlier)]
    return tuple(c - p for c, p in zip(window, [0] + window[:-1]))


def observe(previous: Counters, current: Counters, gauges: Gauges) -> FleetObservation:
    """The window between two counter snapshots, plus the gauges at its end."""
    window = current.time_s - previous.time_s
    if window <= 0:
        raise ValueError(f"window must be positive, got {window!r} s")
    finished = current.finished - previous.finished
    first = current.first_tokens - previous.first_tokens
    inflight_avg = (current.inflight_area - previous.inflight_area) / window
    ready = gauges.ready_replicas
    return FleetObservation(
        now_s=current.time_s,
        window_s=window,
        arrival_rate_rps=(current.arrivals - previous.arrivals) / window,
        running=gauges.running,
        waiting=gauges.waiting,
        kv_usage=gauges.kv_usage,
        running_total=sum(gauges.running),
        waiting_total=sum(gauges.waiting),
        kv_usage_mean=float(np.mean(gauges.kv_usage)) if gauges.kv_usage else 0.0,
        ttft_buckets_s=TTFT_BUCKETS_S,
        ttft_bucket_deltas=window_bucket_counts(previous.ttft_bucket_counts, current.ttft_bucket_counts),
        itl_buckets_s=ITL_BUCKETS_S,
        itl_bucket_deltas=window_bucket_counts(previous.itl_bucket_counts, current.itl_bucket_counts),
        ttft_mean_s=(current.ttft_sum_s - previous.ttft_sum_s) / first if first else None,
        itl_mean_s=(current.itl_sum_s - previous.itl_sum_s) / finished if finished else None,
        mean_prompt_tokens=(
            (current.prompt_tokens_finished - previous.prompt_tokens_finished) / finished
            if finished else None
        ),
        mean_output_tokens=(
            (current.output_tokens_finished - previous.output_tokens_finished) / finished
            if finished else None
        ),
        finished_in_window=finished,
        replicas=gauges.replicas,
        ready_replicas=ready,
        proxy_inflight=gauges.proxy_inflight,
        proxy_inflight_avg=inflight_avg,
        concurrency_per_pod=inflight_avg / ready if ready else inflight_avg,
        front_queue=gauges.front_queue,
    )
