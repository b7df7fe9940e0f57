"""Kiban's peers in the benchmark, re-implemented from their documented behaviour
(reference/peers.md; no peer code copied), and a fixed fleet. Kiban itself is in
operator_policy.py: it observes through the operator's collector, never FleetObservation.

Every peer sees a `FleetObservation` at its own polling period, built from the fleet's own
counters and gauges, and uses only its own documented signal from it: KubeAI the proxy's
in-flight requests (its own proxy's count), Knative the time-averaged concurrency (the
activator's / queue-proxy's), production-stack KEDA the sum of vLLM's waiting gauges plus the
proxy's held requests (the instant value, where KEDA reads a scraped one: in its favour),
AIBrix the mean KV-cache usage (read from the pods), llm-d the P90 TTFT over 1-minute bucket
rates (its endpoint picker's histogram, here the client-side TTFT observed at request end),
Dynamo its frontend's request rate and token means. Each returns a replica count; the fleet
clamps it to [min, max] and applies it. Each policy object is stateful and used for one run only.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from kiban.autoscale.policy import capacity_per_replica_rps, round_tokens_up
from kiban.capacity.batching import Slo
from kiban.capacity.engine_profile import EngineProfile
from kiban_dev.benchmark.observe import FleetObservation, histogram_quantile


class _Windowed:
    """Time-stamped samples kept for the longest window a policy needs."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, now_s: float, value: float) -> None:
        self.samples.append((now_s, value))
        while self.samples and now_s - self.samples[0][0] >= self.keep_s:
            self.samples.popleft()

    def mean(self, now_s: float, window_s: float) -> float:
        values = [v for t, v in self.samples if now_s - t < window_s]
        return sum(values) / len(values) if values else 0.0


@dataclass
class StaticPolicy:
    """A fixed fleet: the count never changes (sized for the peak by the runner's search)."""

    replicas: int
    interval_s: float = 60.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas!r}")
        self.name = self.name or f"static-peak ({self.replicas})"

    def desired_replicas(self, obs: FleetObservation) -> int:
        return self.replicas


def ttft_quantile_s(obs: FleetObservation, q: float) -> float | None:
    """histogram_quantile of the window's TTFT, as the operator's collector reads it from Prometheus."""
    return obs.ttft_quantile_s(q)


@dataclass
class KubeAIPolicy:
    """KubeAI: replicas = ceil(moving average of proxy in-flight requests / targetRequests).

    Sampled every 10 s (its default), averaged over a 10-minute window (60 samples; until
    60 samples exist, over those there are), scaled up at once, scaled down only after
    scaleDownDelaySeconds of consecutive "down" decisions. KubeAI's default targetRequests
    is 100; the runner also tries the smaller values a careful user would.
    """

    target_requests: float = 100.0
    interval_s: float = 10.0
    window_s: float = 600.0
    scale_down_delay_s: float = 30.0
    name: str = ""

    def __post_init__(self) -> None:
        if not self.target_requests > 0:
            raise ValueError(f"target_requests must be > 0, got {self.target_requests!r}")
        self.name = self.name or f"kubeai (targetRequests={self.target_requests:g})"
        self._samples: deque[float] = deque(maxlen=max(1, round(self.window_s / self.interval_s)))
        self._down_since: float | None = None

    def desired_replicas(self, obs: FleetObservation) -> int:
        self._samples.append(float(obs.proxy_inflight))
        average = sum(self._samples) / len(self._samples)
        desired = max(1, math.ceil(round(average / self.target_requests, 9)))
        current = obs.replicas
        if desired >= current:
            self._down_since = None
            return desired
        if self._down_since is None:
            self._down_since = obs.now_s
        if obs.now_s - self._down_since + self.interval_s >= self.scale_down_delay_s:
            self._down_since = None
            return desired
        return current


@dataclass
class KnativeKPAPolicy:
    """Knative KPA (KServe serverless): concurrency per pod against a target.

    Ticks every 2 s (the autoscaler's tick); each sample is the time-averaged in-flight
    requests over the tick. Stable mode: ceil(60 s average / target). Panic mode, entered when
    the 6 s average asks for >= 2x the ready pods, scales on the 6 s average and never scales
    down until 60 s pass without that condition. Scale-down is at most 2x per tick (Knative's
    max-scale-down-rate). Knative's default target is 100 x 0.7 utilisation = 70.
    """

    target_concurrency: float = 70.0
    interval_s: float = 2.0
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    max_scale_down_rate: float = 2.0
    name: str = ""

    def __post_init__(self) -> None:
        if not self.target_concurrency > 0:
            raise ValueError(f"target_concurrency must be > 0, got {self.target_concurrency!r}")
        self.name = self.name or f"knative-kpa (target={self.target_concurrency:g})"
        self._samples = _Windowed(self.stable_window_s)
        self._panic_since: float | None = None
        self._panic_last = -math.inf
        self._panic_max = 0

    def desired_replicas(self, obs: FleetObservation) -> int:
        now = obs.now_s
        self._samples.add(now, obs.proxy_inflight_avg)
        stable = self._samples.mean(now, self.stable_window_s) / self.target_concurrency
        panic = self._samples.mean(now, self.panic_window_s) / self.target_concurrency
        ready = max(1, obs.ready_replicas)
        if panic / ready >= self.panic_threshold:
            if self._panic_since is None:
                self._panic_since = now
            self._panic_last = now
        elif self._panic_since is not None and now - self._panic_last >= self.stable_window_s:
            self._panic_since, self._panic_max = None, 0
        if self._panic_since is not None:
            desired = max(math.ceil(round(panic, 9)), self._panic_max, obs.replicas)
            self._panic_max = desired
            return desired
        desired = max(1, math.ceil(round(stable, 9)))
        return max(desired, math.ceil(ready / self.max_scale_down_rate))


@dataclass
class KedaWaitingPolicy:
    """vLLM production-stack's KEDA ScaledObject on sum(vllm:num_requests_waiting).

    KEDA feeds the HPA an external metric with an AverageValue target (the threshold, 5 by
    default), polled every 15 s; the HPA's rules then apply: desired = ceil(current x
    (metric / current) / threshold) = ceil(metric / threshold), kept when within 10 % of the
    current ratio, scale-up limited to max(2x, +4 pods) per 15 s, scale-down to the highest
    recommendation of the last 300 s (the stabilisation window). minReplicaCount is 1 here.
    """

    threshold: float = 5.0
    interval_s: float = 15.0
    stabilization_s: float = 300.0
    tolerance: float = 0.1
    name: str = ""

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold!r}")
        self.name = self.name or f"production-stack-keda (waiting>{self.threshold:g})"
        self._recommendations: deque[tuple[float, int]] = deque()

    def desired_replicas(self, obs: FleetObservation) -> int:
        current = max(1, obs.replicas)
        waiting = obs.waiting_total + obs.front_queue
        ratio = waiting / (self.threshold * current)
        if abs(ratio - 1.0) <= self.tolerance:
            raw = current
        else:
            raw = max(1, math.ceil(round(waiting / self.threshold, 9)))
        now = obs.now_s
        self._recommendations.append((now, raw))
        while now - self._recommendations[0][0] >= self.stabilization_s:
            self._recommendations.popleft()
        if raw < current:
            return min(current, max(r for _, r in self._recommendations))
        return min(raw, max(2 * current, current + 4))


@dataclass
class AibrixAPAPolicy:
    """AIBrix APA on vLLM's KV-cache usage per pod (its documented example metric).

    Every 15 s: the per-pod mean KV usage, averaged over a 180 s window (and a 60 s panic
    window for scaling up); desired = ceil(current x metric / target) when the ratio leaves
    the +-10 % band; at most 2x up or 2x down per step; no scale-down within 300 s of the
    last scaling change (the cooldown). The user picks the target; the runner tries a few.
    """

    target_kv_usage: float = 0.3
    interval_s: float = 15.0
    window_s: float = 180.0
    panic_window_s: float = 60.0
    tolerance: float = 0.1
    max_rate: float = 2.0
    scale_down_cooldown_s: float = 300.0
    name: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.target_kv_usage <= 1:
            raise ValueError(f"target_kv_usage must be in (0, 1], got {self.target_kv_usage!r}")
        self.name = self.name or f"aibrix-apa (kv target={self.target_kv_usage:g})"
        self._samples = _Windowed(self.window_s)
        self._last_change_s = -math.inf

    def desired_replicas(self, obs: FleetObservation) -> int:
        now, current = obs.now_s, max(1, obs.replicas)
        self._samples.add(now, obs.kv_usage_mean)
        stable = self._samples.mean(now, self.window_s) / self.target_kv_usage
        panic = self._samples.mean(now, self.panic_window_s) / self.target_kv_usage
        # the metric is a mean over ready pods, so the ratio scales the ready count
        ready = max(1, obs.ready_replicas)
        desired = current
        up = max(stable, panic)
        if up > 1 + self.tolerance:
            desired = min(max(current, math.ceil(ready * up)), math.floor(current * self.max_rate))
        elif stable < 1 - self.tolerance and now - self._last_change_s >= self.scale_down_cooldown_s:
            desired = min(current, max(math.ceil(ready * stable), math.ceil(current / self.max_rate), 1))
        if desired != current:
            self._last_change_s = now
        return desired


class _Recommendations:
    """(time, replicas) recommendations kept for an HPA stabilisation window."""

    def __init__(self) -> None:
        self.items: deque[tuple[float, int]] = deque()

    def add(self, now_s: float, value: int, keep_s: float) -> None:
        self.items.append((now_s, value))
        while self.items and now_s - self.items[0][0] > keep_s:
            self.items.popleft()

    def within(self, now_s: float, window_s: float) -> list[int]:
        return [v for t, v in self.items if now_s - t <= window_s]


@dataclass
class LlmdSloPolicy:
    """llm-d's SLO-aware law (KEDA on the endpoint picker's latency metrics, reference/peers.md).

    s_raw = max(P90 TTFT / TTFT target, P90 TPOT / TPOT target), the P90s by histogram_quantile
    over 1-minute bucket rates, 0 when idle; s = the 45 s average of min(s_raw, 2). With n
    provisioned and r ready, credit c = r / n when 0 < r < n, else 1: above 0.55,
    d = n + ceil(n (s c / 0.55 - 1)); below 0.40, d = n - floor(n (1 - s / 0.40)); else n. HPA
    behaviour: up by at most max(100 %, 4 pods) per 60 s, the lowest recommendation of the last
    30 s; down 1 pod per 120 s, the highest recommendation of the last 180 s. The benchmark has
    no TPOT target, so only the TTFT term counts. The user sets the targets; the runner tunes
    the TTFT target (the law's own knob), polled every 15 s.
    """

    ttft_target_s: float
    interval_s: float = 15.0
    quantile_window_s: float = 60.0
    average_window_s: float = 45.0
    up_threshold: float = 0.55
    down_threshold: float = 0.40
    cap: float = 2.0
    up_period_s: float = 60.0
    up_window_s: float = 30.0
    down_period_s: float = 120.0
    down_window_s: float = 180.0
    name: str = ""

    def __post_init__(self) -> None:
        if not self.ttft_target_s > 0:
            raise ValueError(f"ttft_target_s must be > 0, got {self.ttft_target_s!r}")
        self.name = self.name or f"llm-d slo (TTFT target {self.ttft_target_s * 1000:.0f} ms)"
        self._buckets: deque[tuple[float, tuple[int, ...]]] = deque()
        self._scores = _Windowed(self.average_window_s)
        self._recommendations = _Recommendations()
        self._history: deque[tuple[float, int]] = deque()  # (time, replicas provisioned)
        self._last_down_s = -math.inf

    def score(self, obs: FleetObservation) -> float:
        """min(P90 TTFT over the last minute / target, cap); 0 when nothing finished."""
        self._buckets.append((obs.now_s, obs.ttft_bucket_deltas))
        while self._buckets and obs.now_s - self._buckets[0][0] >= self.quantile_window_s:
            self._buckets.popleft()
        counts = tuple(sum(c) for c in zip(*(b for _, b in self._buckets)))
        p90 = histogram_quantile(0.90, obs.ttft_buckets_s, counts) if counts and sum(counts) else None
        return 0.0 if p90 is None else min(p90 / self.ttft_target_s, self.cap)

    def desired_replicas(self, obs: FleetObservation) -> int:
        now, n, r = obs.now_s, max(1, obs.replicas), obs.ready_replicas
        self._scores.add(now, self.score(obs))
        s = self._scores.mean(now, self.average_window_s)
        credit = r / n if 0 < r < n else 1.0
        if s > self.up_threshold:
            raw = n + math.ceil(round(n * (s * credit / self.up_threshold - 1.0), 9))
        elif s < self.down_threshold:
            raw = n - math.floor(round(n * (1.0 - s / self.down_threshold), 9))
        else:
            raw = n
        raw = max(1, raw)
        self._recommendations.add(now, raw, max(self.up_window_s, self.down_window_s))
        self._history.append((now, n))
        while self._history and now - self._history[0][0] > self.up_period_s:
            self._history.popleft()
        if raw > n:
            desired = min(self._recommendations.within(now, self.up_window_s))
            base = min(v for _, v in self._history)  # replicas at the start of the 60 s period
            desired = min(max(desired, n), base + max(base, 4))
            return max(desired, n)
        if raw < n:
            desired = max(self._recommendations.within(now, self.down_window_s))
            if desired < n and now - self._last_down_s >= self.down_period_s:
                self._last_down_s = now
                return n - 1
        return n


@dataclass
class DynamoPlannerPolicy:
    """NVIDIA Dynamo's planner in throughput mode (reference/peers.md).

    Every 180 s it predicts the next interval's request rate and input/output lengths from the
    past intervals (ARIMA, its default predictor) and sets replicas = predicted rate / one
    engine's capacity at the TTFT target, that capacity read from a profiling sweep of the real
    engine: here the capacity model on the fleet's true engine (`engine`, which Kiban never
    gets), as an offline sweep would measure it. At least 1 replica. The runner tunes the TTFT
    target the capacity is read at.
    """

    engine: EngineProfile
    ttft_target_s: float
    interval_s: float = 180.0
    min_history: int = 4  # intervals before ARIMA is fitted; the last value until then
    name: str = ""

    def __post_init__(self) -> None:
        if not self.ttft_target_s > 0:
            raise ValueError(f"ttft_target_s must be > 0, got {self.ttft_target_s!r}")
        self.name = self.name or f"dynamo planner (TTFT target {self.ttft_target_s * 1000:.0f} ms)"
        self._rates: list[float] = []
        self._prompts: list[float] = []
        self._outputs: list[float] = []

    def desired_replicas(self, obs: FleetObservation) -> int:
        self._rates.append(obs.arrival_rate_rps)
        if obs.mean_prompt_tokens is not None and obs.mean_output_tokens is not None:
            self._prompts.append(obs.mean_prompt_tokens)
            self._outputs.append(obs.mean_output_tokens)
        rate = max(0.0, arima_forecast(self._rates, self.min_history))
        if rate <= 0:
            return 1
        if not self._prompts:
            return max(1, obs.replicas)
        prompt = max(1.0, arima_forecast(self._prompts, self.min_history))
        output = max(1.0, arima_forecast(self._outputs, self.min_history))
        slo = Slo(ttft_ms=self.ttft_target_s * 1000.0, ttft_percentile=99)
        capacity = capacity_per_replica_rps(self.engine, round_tokens_up(prompt), max(1.0, round_tokens_up(output)),
                                            slo, 1.0)
        if not capacity > 0:
            return max(1, obs.replicas)
        return max(1, math.ceil(round(rate / capacity, 9)))


def arima_forecast(series: list[float], min_history: int = 4) -> float:
    """One-step ARIMA(1,1,1) forecast of the series (statsmodels); the last value while the
    series is shorter than min_history or the fit fails."""
    if not series:
        return 0.0
    if len(series) < min_history or max(series) == min(series):
        return float(series[-1])
    import warnings

    from statsmodels.tsa.arima.model import ARIMA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fitted = ARIMA(series, order=(1, 1, 1)).fit()
            value = float(fitted.forecast(1)[0])
        except Exception:  # statsmodels raises several kinds on degenerate series
            return float(series[-1])
    return value if math.isfinite(value) else float(series[-1])
