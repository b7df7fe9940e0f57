"""The SLO autoscaling policy: observation in, replica decision out, no I/O and no clock.

One call of `decide()` per observation interval. It sizes the fleet with the vLLM batching
model (kiban.capacity.batching) for the arrival rate expected one cold start from now, scales
up at once, scales down only after a stabilisation window (the highest recommendation in the
window wins, as in the Kubernetes HPA) and by bounded steps, honours min/max replicas and a
GPU budget, scales to zero only after a stretch of exactly zero traffic, and keeps the
current size whenever the metrics cannot be trusted. State is an immutable value the caller
keeps and passes back.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

from kiban.capacity.batching import Slo, max_arrival_rate, predict, prefill_alone_ms
from kiban.capacity.engine_profile import EngineProfile

TOKEN_GRID_RATIO = 1.02  # token means are rounded up to this relative grid for the capacity cache
CAPACITY_GRID_RATIO = 1.10  # capacities are solved at this grid's points and interpolated between them
MIN_TREND_SAMPLES = 3
MIN_TREND_SPAN_S = 30.0
BURST_FACTOR_WINDOWS = 2  # a missed burst's factor fades over this many burst windows
TREND_SIGNIFICANCE_Z = 2.0  # a rate trend is extrapolated only when slope > z x its standard error
# No model is fed more than this: a larger rate is a broken exporter or Prometheus (the collector
# checks per engine; this is the policy's own guard), and must never enter the policy's memory.
MAX_ARRIVAL_RPS = 1e6
MAX_TOKENS = 1e7  # a token mean above this is no request any model takes
MIX_GRID = 1 / 32  # prompt-mix tail shares are rounded up to this grid, so the capacity cache hits ...
TAIL_GRID_RATIO = 2 ** 0.25  # ... and shares below it onto a geometric grid of this ratio (at most 19 % up)
TAIL_FLOOR = 1e-4  # tail shares below this (a hundredth of p99's misses) compare as one step below it
PREDICTION_GRID_RATIO = 1.05  # the predicted latency is solved at rates on a 5 % grid, rounded up
CACHE_SIZE = 16_384  # capacity and latency results kept (about 16 per model at 1,000 models)


@dataclass(frozen=True, kw_only=True)
class Observation:
    """What the collector saw at time_s, summed over the model's replicas."""

    time_s: float
    metrics_available: bool
    reason_unavailable: str | None = None
    arrival_rate_rps: float | None = None
    # the window the rate is measured over (the collector's rate window); None: the time since
    # the previous decision. It sets the Poisson scatter and the length of a burst sample.
    rate_window_s: float | None = None
    mean_prompt_tokens: float | None = None
    mean_output_tokens: float | None = None
    running: float | None = None
    waiting: float | None = None
    observed_ttft_p95_s: float | None = None
    # TTFT at the SLO's percentile over the last window (histogram_quantile); None: not collected
    observed_ttft_slo_percentile_s: float | None = None
    # prompt-length law of the window as (tokens, probability), e.g. from the prompt-token
    # histogram's bucket deltas; None: every prompt is taken at the mean
    prompt_mix: tuple[tuple[float, float], ...] | None = None
    current_replicas: int
    ready_replicas: int = 0
    # requests the Kiban gateway holds because no replica is ready (status.gateway.held, fresh
    # entries only): the wake-from-zero signal, which needs no engine to be scraped
    held_requests: int = 0


@dataclass(frozen=True, kw_only=True)
class ScalingConfig:
    """The knobs of one model's autoscaling, validated so a bad one names its field."""

    min_replicas: int = 1
    max_replicas: int
    slo: Slo
    target_utilization: float = 0.75
    peak_factor: float = 1.0
    scale_down_stabilization_s: float = 600.0  # the CRD's default (chosen on held-out traces: heldout.py)
    max_scale_down_step: float = 1  # >= 1: replicas per decision; in (0, 1): share of current
    startup_s: float | None = None  # look-ahead; None: the profile's startup_s
    scale_to_zero_idle_s: float = 600.0
    gpus_per_replica: int = 1
    gpu_budget: int | None = None
    trend_window_s: float = 180.0  # arrival-rate history used to extrapolate the trend
    max_lookahead_factor: float = 2.0  # the forecast never exceeds this multiple of the current rate
    backlog_drain_s: float = 60.0  # a harmful queue is sized to drain within this time
    burst_window_s: float = 900.0  # own rate history the burst allowance is fitted on; 0: none
    burst_overflow: float | None = None  # share of recent load allowed above the sized rate; None: from the SLO
    token_window_s: float = 300.0  # token means are rate-weighted over this much history
    burst_floor_max_step: float = 1.5  # one missed burst raises the floor to at most this × the ready fleet
    burst_floor_fade: bool = True  # a burst's extra replicas fade out over the burst window

    def __post_init__(self) -> None:
        def integer(name: str, value: object, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

        def positive(name: str, value: object, allow_zero: bool = False) -> None:
            ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
            if not ok:
                raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")

        integer("min_replicas", self.min_replicas, 0)
        integer("max_replicas", self.max_replicas, 1)
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if not isinstance(self.slo, Slo):
            raise ValueError(f"slo must be a kiban.capacity.batching.Slo, got {type(self.slo).__name__}")
        if not isinstance(self.target_utilization, (int, float)) or not 0 < self.target_utilization <= 1:
            raise ValueError(f"target_utilization must be in (0, 1], got {self.target_utilization!r}")
        if not isinstance(self.peak_factor, (int, float)) or not self.peak_factor >= 1:
            raise ValueError(f"peak_factor must be >= 1, got {self.peak_factor!r}")
        positive("scale_down_stabilization_s", self.scale_down_stabilization_s, allow_zero=True)
        positive("max_scale_down_step", self.max_scale_down_step)
        if self.startup_s is not None:
            positive("startup_s", self.startup_s, allow_zero=True)
        positive("scale_to_zero_idle_s", self.scale_to_zero_idle_s, allow_zero=True)
        integer("gpus_per_replica", self.gpus_per_replica, 1)
        if self.gpu_budget is not None:
            integer("gpu_budget", self.gpu_budget, 0)
            if self.min_replicas * self.gpus_per_replica > self.gpu_budget:
                raise ValueError(
                    f"gpu_budget ({self.gpu_budget}) is below min_replicas x gpus_per_replica "
                    f"({self.min_replicas} x {self.gpus_per_replica})"
                )
        positive("trend_window_s", self.trend_window_s)
        if not isinstance(self.max_lookahead_factor, (int, float)) or not self.max_lookahead_factor >= 1:
            raise ValueError(f"max_lookahead_factor must be >= 1, got {self.max_lookahead_factor!r}")
        positive("backlog_drain_s", self.backlog_drain_s)
        positive("burst_window_s", self.burst_window_s, allow_zero=True)
        if self.burst_overflow is not None and not (
            isinstance(self.burst_overflow, (int, float)) and 0 < self.burst_overflow < 1
        ):
            raise ValueError(f"burst_overflow must be in (0, 1) or None, got {self.burst_overflow!r}")
        positive("token_window_s", self.token_window_s, allow_zero=True)
        if not isinstance(self.burst_floor_max_step, (int, float)) or not self.burst_floor_max_step >= 1:
            raise ValueError(f"burst_floor_max_step must be >= 1, got {self.burst_floor_max_step!r}")


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between calls; the caller stores it and passes it back."""

    recommendations: tuple[tuple[float, int], ...] = ()  # (time_s, replicas) inside the window
    rate_samples: tuple[tuple[float, float], ...] = ()  # (time_s, arrival_rate_rps) for the trend
    last_scale_time_s: float | None = None
    last_traffic_time_s: float | None = None  # last time any request was seen
    first_seen_time_s: float | None = None  # idle time counts from here until traffic is seen
    burst_samples: tuple[tuple[float, float], ...] = ()  # (time_s, arrival_rate_rps) for the burst allowance
    token_samples: tuple[tuple[float, float, float, float], ...] = ()  # (time_s, rate, prompt, output)
    burst_factors: tuple[tuple[float, float], ...] = ()  # (time_s, factor) missed bursts asked for
    last_replicas: int | None = None  # current_replicas at the previous call: a rise from 0 is traffic
    # the capacity model's last inputs (prompt tokens, output tokens, prompt mix) on their grids,
    # kept while they still cover the new ones: the capacity cache's key (sticky_inputs)
    capacity_inputs: tuple | None = None
    # (capacity per replica, rate, prompt, output) of the last decision with traffic: the next
    # capacity may move from it only as far as stable_capacity allows
    last_capacity: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Decision:
    """The replica count to set and why, with the latency the model expects at that size."""

    replicas: int
    reason: str
    predicted_ttft_p95_s: float | None  # math.inf: the queue would grow without bound
    predicted_itl_p95_s: float | None
    capacity_per_replica_rps: float | None
    limited: str | None  # "MaxReplicas" or "GpuBudget" when they held the count down
    metrics_ok: bool
    forecast_rate_rps: float | None = None


# -- pure helpers ------------------------------------------------------------------------------


def _usable(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def woke_from_zero(state: PolicyState, current_replicas: int) -> bool:
    """The model was at zero replicas at the previous call and is not now: someone (a user's
    `kubectl scale`, a gateway holding a request) woke it, which is traffic by any other name."""
    return state.last_replicas == 0 and current_replicas > 0


def round_tokens_up(tokens: float) -> float:
    """Round a token mean up onto a 2 % geometric grid: cacheable, and never optimistic."""
    if tokens <= 1:
        return float(math.ceil(tokens))
    step = math.ceil(math.log(tokens) / math.log(TOKEN_GRID_RATIO) - 1e-9)
    return round(TOKEN_GRID_RATIO**step, 6)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _capacity_node(
    profile: EngineProfile, prompt_tokens: float, output_tokens: float, slo: Slo, target_utilization: float,
    prompt_mix: tuple[tuple[float, float], ...] | None = None,
) -> float:
    """Memoised max_arrival_rate: a pure function of hashable values, so caching is safe."""
    return max_arrival_rate(profile, prompt_tokens, output_tokens, slo, target_utilization, prompt_mix=prompt_mix)


def _grid_bracket(tokens: float) -> tuple[float, float, float]:
    """The two CAPACITY_GRID_RATIO grid points around `tokens` and where it lies between them (0-1)."""
    position = math.log(tokens) / math.log(CAPACITY_GRID_RATIO)
    low = math.floor(position + 1e-9)
    share = min(1.0, max(0.0, position - low))
    return round(CAPACITY_GRID_RATIO**low, 6), round(CAPACITY_GRID_RATIO**(low + 1), 6), share


@functools.lru_cache(maxsize=CACHE_SIZE)
def capacity_per_replica_rps(
    profile: EngineProfile, prompt_tokens: float, output_tokens: float, slo: Slo, target_utilization: float,
    prompt_mix: tuple[tuple[float, float], ...] | None = None,
) -> float:
    """The largest rate one replica sustains within the SLO (max_arrival_rate), memoised.

    Without a prompt mix, interpolated log-linearly between the capacities at the corners of a
    10 % geometric grid in prompt and output tokens (each corner computed once): capacity falls
    smoothly with both, so the grid costs about 1 % at most and a workload whose means wander
    costs a few dozen capacity solves, not one per decision. A prompt mix captures the
    long-prompt tail that the mean alone hides; it is solved exactly."""
    if prompt_mix is not None or prompt_tokens <= 1 or output_tokens <= 1:
        return _capacity_node(profile, prompt_tokens, output_tokens, slo, target_utilization, prompt_mix)
    p0, p1, sp = _grid_bracket(prompt_tokens)
    o0, o1, so = _grid_bracket(output_tokens)
    corners = [[_capacity_node(profile, p, o, slo, target_utilization) for o in (o0, o1)] for p in (p0, p1)]
    if min(min(row) for row in corners) <= 0:  # an unattainable corner: no smooth surface to follow
        return _capacity_node(profile, prompt_tokens, output_tokens, slo, target_utilization)
    logs = [[math.log(c) for c in row] for row in corners]
    low = logs[0][0] * (1 - so) + logs[0][1] * so
    high = logs[1][0] * (1 - so) + logs[1][1] * so
    return math.exp(low * (1 - sp) + high * sp)


def trend_slope_rps_per_s(samples: tuple[tuple[float, float], ...], z: float = TREND_SIGNIFICANCE_Z) -> float:
    """Least-squares slope of arrival rate over time, or 0 when it is not above z standard
    errors: 0 without enough history, and 0 for the slopes sampling noise draws on a steady
    stream, which extrapolated over a cold start would buy replicas for load that never comes."""
    if len(samples) < MIN_TREND_SAMPLES or samples[-1][0] - samples[0][0] < MIN_TREND_SPAN_S:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in samples)
    if var_t == 0:
        return 0.0
    slope = sum((t - mean_t) * (r - mean_r) for t, r in samples) / var_t
    intercept = mean_r - slope * mean_t
    residual = sum((r - intercept - slope * t) ** 2 for t, r in samples)
    standard_error = math.sqrt(residual / (n - 2) / var_t) if n > 2 else 0.0
    return slope if slope > z * standard_error else 0.0


def forecast_rate_rps(current_rps: float, slope: float, lookahead_s: float, max_factor: float) -> float:
    """The rate expected lookahead_s from now: never below now, never above max_factor x now."""
    expected = current_rps + max(0.0, slope) * lookahead_s
    return min(max(current_rps, expected), current_rps * max_factor)


def burst_rate_rps(rates: tuple[float, ...] | list[float], overflow: float) -> float:
    """The smallest rate R such that the recent load above R is at most `overflow` of all of it.

    Sizing for R instead of the current rate is the burst allowance: bursts shorter than a
    cold start cannot be met by scaling up, only by the fleet already standing, so the policy
    keeps enough for all but `overflow` of the load its own recent samples saw. A smooth trace
    gives R near its current rate, a bursty one near its recent peaks. 0 without samples.
    """
    positive = sorted((r for r in rates if r > 0), reverse=True)
    if not positive:
        return 0.0
    budget = overflow * sum(positive)
    top_sum = 0.0
    for k, rate in enumerate(positive, start=1):
        top_sum += rate
        level = (top_sum - budget) / k  # excess above `level` of the top k equals the budget
        below = positive[k] if k < len(positive) else 0.0
        if level >= below:
            return max(0.0, level)
    return 0.0


def beyond_poisson_rps(rate_rps: float, interval_s: float | None) -> float:
    """A sampled rate less one Poisson standard deviation of its count: a Poisson stream's
    counts over interval_s scatter by √(rate × interval) by chance alone, and the capacity
    model already prices that scatter, so only what is left is burst."""
    if interval_s is None or not interval_s > 0 or rate_rps <= 0:
        return rate_rps
    return max(0.0, rate_rps - math.sqrt(rate_rps / interval_s))


def transient_tolerance(slo_ttft_s: float | None, unloaded_ttft_s: float, sample_s: float | None) -> float:
    """How far above its steady-state capacity a fleet may be driven for one rate sample: a
    burst of sample_s at (1 + x) x capacity leaves a backlog the last request waits about
    x x sample_s for, so x may reach the TTFT target's slack over an unloaded request, divided
    by sample_s. 1 (none) without a TTFT target or a sample length, or without slack."""
    if slo_ttft_s is None or sample_s is None or not sample_s > 0:
        return 1.0
    return 1.0 + max(0.0, slo_ttft_s - unloaded_ttft_s) / sample_s


@functools.lru_cache(maxsize=CACHE_SIZE)
def burst_capacity_per_replica_rps(
    profile: EngineProfile, prompt_tokens: float, output_tokens: float, slo: Slo, sample_s: float | None,
    prompt_mix: tuple[tuple[float, float], ...] | None = None,
) -> float:
    """What one replica absorbs of a burst that lasts one rate sample: its SLO capacity times
    the transient tolerance. The SLO capacity prices the queueing of a whole stream at that
    rate; a burst that lasts one sample only leaves a backlog for the target's slack to cover.
    A target barely above the unloaded TTFT leaves no slack, and no tolerance."""
    if slo.ttft_ms is None:
        raise ValueError("a burst capacity needs a TTFT target to spend the slack of")
    steady = capacity_per_replica_rps(profile, prompt_tokens, output_tokens, slo, 1.0, prompt_mix)
    if not steady > 0:
        return 0.0
    if prompt_mix is None:  # an idle engine prefills a lone prompt at once: no chain to solve
        unloaded = prefill_alone_ms(profile, prompt_tokens, 0.0) / 1000.0
    else:
        unloaded = predict(profile, steady * 1e-4, prompt_tokens, output_tokens, prompt_mix=prompt_mix).ttft_p95_s
    return steady * transient_tolerance(slo.ttft_ms / 1000.0, unloaded, sample_s)


def burst_overflow_share(config: ScalingConfig) -> float:
    """The share of load the burst allowance may leave above the fleet: the configured one, or
    half the SLO's miss budget (1 % for p99 → 0.5 %), since load above capacity also delays the
    requests behind it."""
    if config.burst_overflow is not None:
        return float(config.burst_overflow)
    slo = config.slo
    percentile = slo.ttft_percentile if slo.ttft_ms is not None else (slo.itl_percentile if slo.itl_ms is not None else 99)
    return max(1e-4, (100.0 - percentile) / 100.0 / 2.0)


def windowed_token_means(samples: tuple[tuple[float, float, float, float], ...]) -> tuple[float, float] | None:
    """Rate-weighted prompt and output means over the window (a short window right after a
    start holds only the short requests that already finished, and reads too low)."""
    weight = sum(rate for _, rate, _, _ in samples)
    if not weight > 0:
        return None
    prompt = sum(rate * p for _, rate, p, _ in samples) / weight
    output = sum(rate * o for _, rate, _, o in samples) / weight
    return prompt, output


def queue_floor_replicas(tail_s: float | None, p95_s: float | None, slo_s: float | None, ready: int) -> int | None:
    """Replicas that would have cleared an observed burst's queue within the TTFT target.

    A burst shorter than a scrape is invisible in the arrival rate but not in the TTFT
    histogram: the tail request waited for the whole queue ahead of it, drained by `ready`
    replicas in tail_s. The same queue drains within slo_s on ready × tail / slo replicas
    (exact for a burst that arrives at once, generous for a longer one). Only a window whose
    p95 also missed the target counts: a lone long prompt over the target is no queue, and
    a fleet sized at its p99 target sees a p99 just over it in some windows by design.
    None when no queue-driven miss was seen.
    """
    if slo_s is None or ready <= 0:
        return None
    if p95_s is None or tail_s is None or not (p95_s > slo_s and tail_s > slo_s):
        return None
    if not math.isfinite(tail_s):
        return None
    return math.ceil(round(ready * tail_s / slo_s, 9))


def held_burst_factor(factors: tuple[tuple[float, float], ...], now_s: float, window_s: float, fade: bool) -> float:
    """How much more than the rate asks for recent missed bursts still want (1: nothing).

    A factor, not a replica count, so it follows the traffic level: bursts that queued past
    the target at the rate-based size keep that size scaled up while they are recent. With
    fade, each factor's excess over 1 shrinks linearly to nothing over the window."""
    held = 1.0
    for time_s, factor in factors:
        share = max(0.0, 1.0 - (now_s - time_s) / window_s) if fade and window_s > 0 else 1.0
        held = max(held, 1.0 + (factor - 1.0) * share)
    return held


MAX_CAPACITY_STEP = 2.0  # capacity per replica moves at most this factor per decision ...


def _moved(new: float, old: float) -> float:
    return max(new / old, old / new) if new > 0 and old > 0 else math.inf


def stable_capacity(previous: tuple[float, float, float, float] | None, capacity: float, rate: float,
                    prompt: float, output: float, step: float = MAX_CAPACITY_STEP) -> float:
    """The capacity per replica, moved from the last decision's by at most `step` x, unless the
    arrival rate, the mean prompt or the mean output moved by more (then by as much as they did).

    A window of a handful of heavy-tailed requests makes the token means and the prompt mix,
    and with them the capacity, jump between ticks (0.007 to 1.54 req/s in the demo); the
    workload itself rarely changes that fast without the rate or a mean saying so."""
    if previous is None or not capacity > 0 or not previous[0] > 0:
        return capacity
    last, last_rate, last_prompt, last_output = previous
    allowed = max(step, _moved(rate, last_rate), _moved(prompt, last_prompt), _moved(output, last_output))
    return min(max(capacity, last / allowed), last * allowed)


def sizing_utilization(config: ScalingConfig) -> float:
    """The utilisation cap the capacity model applies: the configured target only when no
    latency percentile is set. A latency percentile already prices queueing, and the burst
    allowance sizes the headroom from measured burstiness, so a fixed cap on top double counts."""
    if config.slo.ttft_ms is not None or config.slo.itl_ms is not None:
        return 1.0
    return float(config.target_utilization)


def scale_down_step(current: int, max_step: float) -> int:
    """Replicas one decision may remove: a count, or a share of current (at least one)."""
    if max_step >= 1:
        return int(max_step)
    return max(1, math.floor(current * max_step))


def replica_limit(config: ScalingConfig) -> tuple[int, str]:
    """The most replicas allowed and which rule sets it."""
    if config.gpu_budget is not None:
        budget_replicas = config.gpu_budget // config.gpus_per_replica
        if budget_replicas < config.max_replicas:
            return budget_replicas, "GpuBudget"
    return config.max_replicas, "MaxReplicas"


def _limit_note(limited: str, limit: int, config: ScalingConfig) -> str:
    if limited == "GpuBudget":
        return f"capped at {limit} by the GPU budget of {config.gpu_budget} GPUs ({config.gpus_per_replica} per replica)"
    return f"capped at {limit} by maxReplicas"


def _prune(items: tuple[tuple[float, object], ...], now_s: float, window_s: float) -> tuple:
    return tuple(item for item in items if now_s - item[0] <= window_s)


def round_rate_up(rate_rps: float, ratio: float = PREDICTION_GRID_RATIO) -> float:
    """A per-replica rate rounded up onto a geometric grid (never optimistic): the predicted
    latency, which status and the dashboards show but no decision reads, is then cached per grid
    point instead of solved again for every model's exact, noisy rate on every pass."""
    if rate_rps <= 0:
        return 0.0
    step = math.ceil(math.log(rate_rps) / math.log(ratio) - 1e-9)
    return ratio**step


def predicted_latency_s(
    profile: EngineProfile, per_replica_rps: float, prompt_tokens: float, output_tokens: float,
    prompt_mix: tuple[tuple[float, float], ...] | None = None,
) -> tuple[float, float]:
    """(TTFT p95, ITL p95) one replica expects at this rate, memoised (pure, hashable inputs).

    The rate and token means are rounded up onto their grids first, so steady traffic hits the
    cache on every pass instead of solving the model again for each model and tick."""
    return _predicted_latency_s(profile, round_rate_up(per_replica_rps), round_tokens_up(prompt_tokens),
                                max(1.0, round_tokens_up(output_tokens)), prompt_mix)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _predicted_latency_s(profile: EngineProfile, per_replica_rps: float, prompt_tokens: float, output_tokens: float,
                         prompt_mix: tuple[tuple[float, float], ...] | None) -> tuple[float, float]:
    prediction = predict(profile, per_replica_rps, prompt_tokens, output_tokens, prompt_mix=prompt_mix)
    return prediction.ttft_p95_s, prediction.itl_p95_s


def capacity_cache_misses() -> int:
    """Capacity-model solves so far in this process (each a miss of one of the caches above): the
    grid nodes and exactly solved mixes (_capacity_node), burst capacities and predicted latencies;
    an interpolation between cached nodes solves nothing and is not counted."""
    return (_capacity_node.cache_info().misses + burst_capacity_per_replica_rps.cache_info().misses
            + _predicted_latency_s.cache_info().misses)


SNAP = 6  # decimals a share's position on the grid is snapped to: quantize_mix's 1e-12 sums stay on their step


def round_up_share(share: float, grid: float = MIX_GRID, ratio: float = TAIL_GRID_RATIO) -> float:
    """`share` rounded up onto `grid`, or below one grid step onto the powers of `ratio` (never
    down, never above the grid step): monotone, so a longer tail never rounds shorter."""
    if not share > 0:
        return 0.0
    if share >= grid:
        return min(1.0, math.ceil(round(share / grid, SNAP)) * grid)
    return min(grid, ratio ** math.ceil(round(math.log(share) / math.log(ratio), SNAP)))


def _natural_level(share: float, grid: float, ratio: float) -> int:
    if share >= grid:
        return math.ceil(round(share / grid, SNAP))
    return math.ceil(round(math.log(share / grid) / math.log(ratio), SNAP)) + 1


def share_level(share: float, grid: float = MIX_GRID, ratio: float = TAIL_GRID_RATIO) -> int:
    """The step of round_up_share's grid a share rounds up to: 1, 2, ... for the multiples of
    `grid`, 0, -1, ... for the powers of `ratio` below it; a share more than one step under
    TAIL_FLOOR (none included) counts as one step below TAIL_FLOOR's. Comparing mixes in these steps keeps a 0.15 % and a
    3 % tail apart (17 steps) where 1/32 steps saw one."""
    floor = _natural_level(TAIL_FLOOR, grid, ratio) - 1
    return max(_natural_level(share, grid, ratio), floor) if share > 0 else floor


def steps_between(high: float, low: float) -> int:
    """share_level(high) - share_level(low)."""
    return share_level(high) - share_level(low)


def quantize_mix(pairs: tuple[tuple[float, float], ...], grid: float = MIX_GRID) -> tuple[tuple[float, float], ...]:
    """A prompt mix with its tail shares rounded up (round_up_share): for each length, the share of
    prompts at least that long is rounded up (never optimistic about the long-prompt tail),
    and the shares are their differences. Windows whose mix differs only by sampling noise
    below the grid give the same mix, so the capacity cache hits across passes.

    Shares below one grid step are rounded up geometrically (round_up_share): the SLO's
    percentile lives in the top percent of prompts, and a 0.05 % tail rounded up to 1/32 made
    the model plan for 3 % of prompts at the longest bucket, which on L4 needs an idle replica
    to prefill within the target (one replica's capacity fell 0.43 to 0.05 req/s in a minute)."""
    ordered = sorted(pairs)
    total = sum(p for _, p in ordered)
    if not total > 0:
        return ()
    out: list[tuple[float, float]] = []
    above = 0.0  # the rounded share of prompts longer than the current one
    tail = 0.0
    for tokens, share in reversed(ordered):
        tail += share / total
        rounded = round_up_share(tail, grid)
        if rounded > above:
            out.append((tokens, round(rounded - above, 12)))
            above = rounded
    return tuple(sorted(out))


STICKY_STEPS = 3  # kept inputs may over-state the new ones by at most this many grid steps


def _tail_shares(mix: tuple[tuple[float, float], ...] | None) -> dict[float, float]:
    """Share of prompts at least each length long (1.0 at the shortest)."""
    shares, tail = {}, 0.0
    for tokens, share in sorted(mix or (), reverse=True):
        tail += share
        shares[tokens] = tail
    return shares


def _tail_gaps(kept: tuple[tuple[float, float], ...], new: tuple[tuple[float, float], ...]) -> list[int]:
    """At every length either mix has, how many grid steps (share_level) the kept mix's share of
    prompts at least that long is above the new one's (negative: below)."""
    old, fresh = _tail_shares(kept), _tail_shares(new)

    def tail(shares: dict[float, float], tokens: float) -> float:
        return max((v for t, v in shares.items() if t >= tokens), default=0.0)

    return [steps_between(tail(old, t), tail(fresh, t)) for t in sorted(set(old) | set(fresh))]


def _covers(kept: tuple[tuple[float, float], ...] | None, new: tuple[tuple[float, float], ...] | None) -> bool:
    """Whether the kept mix is at least as long-tailed as the new one at every length, and not more
    than STICKY_STEPS grid steps more (so it is conservative without staying pessimistic)."""
    if kept is None or new is None:
        return kept is None and new is None
    return all(0 <= gap <= STICKY_STEPS for gap in _tail_gaps(kept, new))


def sticky_inputs(kept: tuple | None, prompt: float, output: float,
                  mix: tuple[tuple[float, float], ...] | None) -> tuple[float, float, tuple | None]:
    """The capacity model's inputs for this decision: the kept ones while they still cover the new
    ones (token means at least as long, the mix at least as long-tailed, each by at most
    STICKY_STEPS grid steps), else the new ones. Sampling noise in a window's means and mix
    moves them across grid lines on most passes; keeping what still covers them stays on the
    safe side and lets the capacity cache hit (a miss costs a bisection of the batching model,
    0.1-1 s with a mix, per model)."""
    if kept is not None:
        old_prompt, old_output, old_mix = kept
        slack = TOKEN_GRID_RATIO ** STICKY_STEPS
        if (prompt <= old_prompt <= prompt * slack + 1e-9 and output <= old_output <= output * slack + 1e-9
                and _covers(old_mix, mix)):
            return old_prompt, old_output, old_mix
    return prompt, output, mix


NEAR_STEPS = 8  # a new mix this close to the kept one (tail shares within 8 grid steps) ...
NEAR_TOKENS = 1.10  # ... and token means within 10 % may reuse the kept capacity when it decides alike
DECISIVE_MARGIN = 0.8  # the kept capacity decides alike if 80 % of it gives the same replica count


def _near(kept: tuple, new: tuple) -> bool:
    (p0, o0, m0), (p1, o1, m1) = kept, new
    if not (p0 / NEAR_TOKENS <= p1 <= p0 * NEAR_TOKENS and o0 / NEAR_TOKENS <= o1 <= o0 * NEAR_TOKENS):
        return False
    if (m0 is None) != (m1 is None):
        return False
    if m0 is None:
        return True
    return all(abs(gap) <= NEAR_STEPS for gap in _tail_gaps(m0, m1))


SHARED_CANDIDATES = 256  # solved inputs remembered per (profile, SLO, utilisation) for other models to reuse
_SOLVED: dict[tuple, dict[tuple, None]] = {}  # a memo beside the lru caches: which inputs were solved


def note_solved(profile: EngineProfile, slo: Slo, utilization: float, inputs: tuple) -> None:
    """Remember that `inputs` were solved for this class, newest last, at most SHARED_CANDIDATES."""
    solved = _SOLVED.setdefault((profile, slo, utilization), {})
    solved.pop(inputs, None)
    solved[inputs] = None
    while len(solved) > SHARED_CANDIDATES:
        del solved[next(iter(solved))]


def solved_inputs(profile: EngineProfile, slo: Slo, utilization: float) -> list[tuple]:
    """Inputs already solved for this class, newest first."""
    return list(reversed(_SOLVED.get((profile, slo, utilization), {})))


def reusable_inputs(kept: tuple | None, new: tuple, profile: EngineProfile, slo: Slo, utilization: float,
                    demand_rps: float, min_replicas: int) -> tuple:
    """The inputs to solve with: `new` when already solved; else the model's kept inputs, or any
    other model's solved inputs of the same class, that decide alike (decisive_inputs), so a
    model that is new to this operator (or whose window's mix only wobbled) costs no solve when
    a similar model's answer is already known; else `new`."""
    if new in _SOLVED.get((profile, slo, utilization), {}):
        return new
    for candidate in ([kept] if kept is not None else []) + solved_inputs(profile, slo, utilization):
        if candidate != new and decisive_inputs(candidate, new, profile, slo, utilization, demand_rps,
                                                min_replicas) == candidate:
            return candidate
    return new


def decisive_inputs(kept: tuple, new: tuple, profile: EngineProfile, slo: Slo, utilization: float,
                    demand_rps: float, min_replicas: int) -> tuple:
    """Solve the capacity model again for `new` inputs only when it could change the answer.

    `kept` inputs' capacity is cached. When the new inputs are near them (NEAR_*) and the
    demand (the rate x peak factor x the most the forecast may add) needs the same replica
    count at 80 % of the kept capacity as at all of it, the exact capacity of the new mix
    cannot change the decision: keep the kept inputs (no solve). A model far from a replica
    boundary (most of a fleet) then never pays for the noise in its window's mix."""
    if not _near(kept, new):
        return new
    prompt, output, mix = kept
    if prompt + output > profile.kv_cache_tokens:
        return new
    capacity = capacity_per_replica_rps(profile, prompt, output, slo, utilization, mix)
    if not capacity > 0:
        return new
    replicas = max(min_replicas, 1, math.ceil(round(demand_rps / capacity, 9)))
    margin = max(min_replicas, 1, math.ceil(round(demand_rps / (DECISIVE_MARGIN * capacity), 9)))
    return kept if replicas == margin else new


def _fail_safe(obs: Observation, config: ScalingConfig, state: PolicyState, why: str) -> tuple[Decision, PolicyState]:
    """Keep the current size (within min/max and budget); never scale down for lack of data."""
    limit, limited_by = replica_limit(config)
    keep = max(obs.current_replicas, config.min_replicas)
    limited = None
    reason = f"metrics unavailable ({why}): kept {keep} replicas"
    if keep > limit:
        keep, limited = limit, limited_by
        reason = f"metrics unavailable ({why}): {_limit_note(limited_by, limit, config)}"
    decision = Decision(keep, reason, None, None, None, limited, metrics_ok=False)
    if state.first_seen_time_s is None:
        state = replace(state, first_seen_time_s=obs.time_s)
    if woke_from_zero(state, obs.current_replicas):  # no data yet, but a wake is traffic
        state = replace(state, last_traffic_time_s=obs.time_s)
    return decision, replace(state, last_replicas=obs.current_replicas)


def wake_from_zero(obs: Observation, config: ScalingConfig, state: PolicyState) -> tuple[Decision, PolicyState] | None:
    """Requests held at the gateway with no replica requested → at least one replica now.

    Checked before the metrics: at zero replicas no engine is scraped, so the metrics are
    unavailable by construction, and waiting a scrape and a rate window would add them to
    the held requests' time to first token. None when it does not apply.
    """
    if obs.held_requests <= 0 or obs.current_replicas > 0:
        return None
    limit, limited_by = replica_limit(config)
    target = min(max(config.min_replicas, 1), limit)
    reason = (f"{obs.held_requests} requests held at the gateway with no replica → {target} "
              f"{'replica' if target == 1 else 'replicas'} now (wake from zero)")
    limited = None
    if target < 1:
        limited = limited_by
        reason = f"{obs.held_requests} requests held at the gateway, but {_limit_note(limited_by, limit, config)}"
    now = obs.time_s
    new_state = replace(
        state,
        recommendations=_prune(state.recommendations + ((now, target),), now, config.scale_down_stabilization_s),
        last_scale_time_s=now if target != obs.current_replicas else state.last_scale_time_s,
        last_traffic_time_s=now,
        first_seen_time_s=state.first_seen_time_s if state.first_seen_time_s is not None else now,
        last_replicas=obs.current_replicas,  # 0: the next call, at the woken size, counts the rise as traffic
    )
    return Decision(target, reason, None, None, None, limited, metrics_ok=obs.metrics_available), new_state


# -- the policy's stages (each pure, each tested on its own) -------------------------------------


@dataclass(frozen=True)
class History:
    """The windows of own history a decision reads, with this observation added."""

    now_s: float
    first_seen_s: float
    last_traffic_s: float | None
    rate_samples: tuple[tuple[float, float], ...]
    burst_samples: tuple[tuple[float, float], ...]
    token_samples: tuple[tuple[float, float, float, float], ...]
    sample_s: float | None  # the length one rate sample covers (the rate window), None: unknown


def update_history(obs: Observation, config: ScalingConfig, state: PolicyState) -> History:
    """Stage 0: add the observation to the rate, burst and token windows and prune them; a rise of
    current replicas from zero (kubectl scale, a gateway's wake) counts as traffic."""
    now, rate = obs.time_s, obs.arrival_rate_rps
    first_seen = state.first_seen_time_s if state.first_seen_time_s is not None else now
    busy = (rate > 0 or (obs.running or 0) > 0 or (obs.waiting or 0) > 0 or obs.held_requests > 0
            or woke_from_zero(state, obs.current_replicas))
    last_traffic = now if busy else state.last_traffic_time_s
    rate_samples = _prune(state.rate_samples + ((now, rate),), now, config.trend_window_s)
    previous = state.burst_samples[-1][0] if state.burst_samples else None
    sample_s = obs.rate_window_s if _usable(obs.rate_window_s) and obs.rate_window_s > 0 else (
        now - previous if previous is not None else None)
    burst_samples = _prune(state.burst_samples + ((now, beyond_poisson_rps(rate, sample_s)),), now,
                           config.burst_window_s)
    token_samples = state.token_samples
    if rate > 0:
        token_samples += ((now, rate, float(obs.mean_prompt_tokens), float(obs.mean_output_tokens)),)
    token_samples = _prune(token_samples, now, config.token_window_s)
    return History(now, first_seen, last_traffic, rate_samples, burst_samples, token_samples, sample_s)


@dataclass(frozen=True)
class Sizing:
    """What the rate asks for, before burst factors, limits and scale-down: the replica count,
    the reason's head and notes, and the numbers behind them."""

    recommended: int
    head: str
    notes: tuple[str, ...] = ()
    capacity: float | None = None  # the capacity per replica sized with (req/s)
    forecast: float | None = None
    mean_prompt: float | None = None  # the token means sized with (the window's, rate-weighted)
    mean_output: float | None = None
    prompt: float | None = None  # the capacity model's inputs: the means rounded up onto the token
    output: float | None = None  # grid, or kept ones that cover them (capacity_inputs_stage; busy only)
    prompt_mix: tuple[tuple[float, float], ...] | None = None


def capacity_inputs_stage(obs: Observation, config: ScalingConfig, state: PolicyState, history: History,
                          profile: EngineProfile, prompt: float, output: float,
                          mix: tuple[tuple[float, float], ...] | None) -> tuple:
    """Stage 2a, the inputs to solve the capacity with, chosen so the capacity cache hits.

    Token means alone: as they are, since capacity_per_replica_rps interpolates between cached
    nodes of its 10 % grid and a wandering mean costs no solve. With a prompt mix (quantised by
    quantize_mix, and solved exactly: the grid does not interpolate mixes): the kept inputs while they
    still cover the new ones (sticky_inputs), else the kept or another model's solved inputs when
    they decide alike (reusable_inputs), else the new ones."""
    new = (prompt, output, mix)
    if mix is None:
        return new
    kept = state.capacity_inputs
    inputs = sticky_inputs(kept, prompt, output, mix)
    utilization = sizing_utilization(config)
    if inputs != kept:
        demand = (config.peak_factor * max(obs.arrival_rate_rps * config.max_lookahead_factor,
                                           burst_allowance_rps(history, config))
                  + (obs.waiting or 0) / config.backlog_drain_s)
        inputs = reusable_inputs(kept, inputs, profile, config.slo, utilization, demand, config.min_replicas)
    if inputs[0] + inputs[1] <= profile.kv_cache_tokens:
        note_solved(profile, config.slo, utilization, inputs)
    return inputs


def forecast_stage(rate: float, rate_samples: tuple[tuple[float, float], ...], lookahead_s: float,
                   config: ScalingConfig) -> float:
    """Stage 1, forecast: the rate expected one look-ahead (cold start) from now."""
    slope = trend_slope_rps_per_s(rate_samples)
    return forecast_rate_rps(rate, slope, lookahead_s, config.max_lookahead_factor)


@dataclass(frozen=True)
class SteadyCapacity:
    """Stage 2's answer: the capacity per replica at the SLO, and whether the SLO was attainable."""

    capacity: float  # 0: a request does not fit the KV cache
    fits_kv: bool
    slo_attainable: bool
    slo_text: str
    notes: tuple[str, ...] = ()


def steady_capacity_stage(profile: EngineProfile, prompt: float, output: float, config: ScalingConfig,
                          prompt_mix: tuple[tuple[float, float], ...] | None) -> SteadyCapacity:
    """Stage 2, steady capacity: the largest steady rate one replica sustains within the SLO at
    the window's request shape; an SLO even a lone request misses falls back to utilisation."""
    slo = config.slo
    fits_kv = prompt + output <= profile.kv_cache_tokens
    capacity = (capacity_per_replica_rps(profile, prompt, output, slo, sizing_utilization(config), prompt_mix)
                if fits_kv else 0.0)
    if capacity <= 0 and fits_kv:  # even a lone request misses the SLO: size for utilisation only
        capacity = capacity_per_replica_rps(profile, prompt, output, Slo(), float(config.target_utilization))
        note = f"{slo.describe()} is unattainable on {profile.name} even unloaded: sized for utilisation only"
        return SteadyCapacity(capacity, fits_kv, False, "no latency target", (note,))
    return SteadyCapacity(capacity, fits_kv, True, slo.describe())


def burst_allowance_rps(history: History, config: ScalingConfig) -> float:
    """Stage 3a, burst allowance: the rate the recent bursts ask the standing fleet to absorb."""
    if config.burst_window_s <= 0:
        return 0.0
    return burst_rate_rps([r for _, r in history.burst_samples], burst_overflow_share(config))


def burst_absorption_rps(profile: EngineProfile, prompt: float, output: float, config: ScalingConfig,
                         capacity: float, solved: float, sample_s: float | None,
                         prompt_mix: tuple[tuple[float, float], ...] | None) -> float:
    """Stage 3b: what one replica absorbs of a burst lasting one rate sample (its burst capacity),
    scaled as the steady capacity was by stable_capacity; the steady capacity without a TTFT target."""
    if config.slo.ttft_ms is None or not capacity > 0:
        return capacity
    return burst_capacity_per_replica_rps(profile, prompt, output, config.slo, sample_s, prompt_mix) * capacity / solved


def idle_sizing(obs: Observation, config: ScalingConfig, history: History, profile: EngineProfile) -> Sizing:
    """No arrivals in the window: keep the minimum (or go to zero after the idle window), and in a
    lull inside a bursty stretch the fleet the recent bursts need (stage 3 at the steady capacity)."""
    current = obs.current_replicas
    idle_since = history.last_traffic_s if history.last_traffic_s is not None else history.first_seen_s
    idle_s = history.now_s - idle_since
    if (config.min_replicas == 0 and idle_s >= config.scale_to_zero_idle_s and (obs.waiting or 0) == 0
            and obs.held_requests == 0):
        recommended = 0
        head = (f"no requests for {idle_s:.0f} s (≥ {config.scale_to_zero_idle_s:.0f} s) "
                "and minReplicas is 0 → 0 replicas")
    else:
        recommended = max(config.min_replicas, 1 if current > 0 else 0)
        head = f"λ=0 req/s for {idle_s:.0f} s → {recommended} replicas (minimum kept while idle)"
    sizing = Sizing(recommended, head, forecast=0.0, mean_prompt=obs.mean_prompt_tokens,
                    mean_output=obs.mean_output_tokens)
    if not (recommended > 0 and config.burst_window_s > 0 and current > 0):
        return sizing
    burst = burst_allowance_rps(history, config)
    means = windowed_token_means(history.token_samples)
    if not (burst > 0 and means is not None):
        return sizing
    mean_prompt, mean_output = means
    # in a lull no live sample bounds the next burst, so its fleet stays at the steady
    # capacity (sizing it at the burst capacity here cost code 0.4 % attainment)
    capacity = capacity_per_replica_rps(profile, round_tokens_up(mean_prompt), max(1.0, round_tokens_up(mean_output)),
                                        config.slo, sizing_utilization(config))
    sizing = replace(sizing, capacity=capacity, mean_prompt=mean_prompt, mean_output=mean_output)
    if capacity > 0:
        keep = math.ceil(round(burst * config.peak_factor / capacity, 9))
        if keep > recommended:
            head += f"; burst allowance {burst:.3g} req/s over {config.burst_window_s:.0f} s → {keep} replicas"
            sizing = replace(sizing, recommended=keep, head=head)
    return sizing


def busy_sizing(obs: Observation, config: ScalingConfig, state: PolicyState, history: History,
                profile: EngineProfile) -> Sizing:
    """Arrivals in the window: stages 1-3 (forecast, steady capacity, burst allowance) and the
    drain of a harmful queue, as one replica count and its reason."""
    rate, slo, mix = obs.arrival_rate_rps, config.slo, _mix(obs.prompt_mix)
    lookahead_s = config.startup_s if config.startup_s is not None else profile.startup_s
    mean_prompt, mean_output = windowed_token_means(history.token_samples) or (obs.mean_prompt_tokens,
                                                                               obs.mean_output_tokens)
    prompt, output, mix = capacity_inputs_stage(obs, config, state, history, profile, round_tokens_up(mean_prompt),
                                                max(1.0, round_tokens_up(mean_output)), mix)
    steady = steady_capacity_stage(profile, prompt, output, config, mix)
    notes = list(steady.notes)
    forecast = forecast_stage(rate, history.rate_samples, lookahead_s, config)
    burst = burst_allowance_rps(history, config)
    backlog_rps = (obs.waiting or 0) / config.backlog_drain_s if _queue_hurts(obs, slo) else 0.0
    sizing_rate = forecast * config.peak_factor + backlog_rps
    # a burst is sized against what a replica absorbs of one sample's worth of it (above its
    # steady-state capacity, by the TTFT target's slack); without a TTFT target, the capacity
    solved = steady.capacity
    capacity = stable_capacity(state.last_capacity, solved, rate, prompt, output)
    absorbs = (burst_absorption_rps(profile, prompt, output, config, capacity, solved, history.sample_s, mix)
               if burst > 0 and steady.slo_attainable else capacity)
    if capacity > 0:
        # any traffic at all needs a replica to serve it, however small the rate rounds
        recommended = max(config.min_replicas, 1, math.ceil(round(sizing_rate / capacity, 9)),
                          math.ceil(round(burst * config.peak_factor / absorbs, 9)) if absorbs > 0 else 0)
    else:  # requests this long do not fit one replica's KV cache: no size helps, so hold
        recommended = max(config.min_replicas, obs.current_replicas, 1)
        notes.append(f"a request of {prompt:.0f}+{output:.0f} tokens does not fit {profile.name}'s KV cache: "
                     f"holding {recommended} replicas")
    head = f"λ={rate:.3g} req/s"
    if forecast > rate:
        head += f" (expected {forecast:.3g} req/s in {lookahead_s:.0f} s)"
    if burst > forecast:
        head += f", burst allowance {burst:.3g} req/s (≤ {burst_overflow_share(config):.2%} of the last " \
                f"{config.burst_window_s:.0f} s above it; a replica absorbs {absorbs:.3g} req/s of a burst)"
    if config.peak_factor > 1:
        head += f" × peak {config.peak_factor:g}"
    if backlog_rps > 0:
        head += f" + {obs.waiting:.0f} waiting to drain in {config.backlog_drain_s:.0f} s"
    head += f"; one replica sustains {capacity:.3g} req/s at {steady.slo_text}"
    utilization = sizing_utilization(config)
    if utilization < 1:
        head += f", utilisation ≤ {utilization:.0%}"
    head += f" → {recommended} replicas"
    return Sizing(recommended, head, tuple(notes), capacity, forecast, mean_prompt, mean_output, prompt, output, mix)


def burst_factor_stage(obs: Observation, config: ScalingConfig, state: PolicyState, recommended: int
                       ) -> tuple[int, tuple[tuple[float, float], ...], tuple[str, ...]]:
    """Stage 3c, observed queue: bursts the rate missed but the TTFT histogram saw raise the count
    by a factor that fades over the burst windows. Returns (count, the factors kept, notes).

    The factor scales the rounded count: one replica times a fading factor just above 1 is two
    until the factor is gone. Scaling the fractional need instead (so a lone replica drops its
    extra as the traffic falls) was tried on the held-out material (heldout.py): 4 % cheaper,
    but code's attainment fell from 96.6 % to 94.1 %, so it was not kept."""
    burst_factors = state.burst_factors
    if config.burst_window_s <= 0:
        return recommended, burst_factors, ()
    now, slo = obs.time_s, config.slo
    slo_s = slo.ttft_ms / 1000.0 if slo.ttft_ms is not None else None
    floor = queue_floor_replicas(obs.observed_ttft_slo_percentile_s, obs.observed_ttft_p95_s, slo_s,
                                 obs.ready_replicas)
    if floor is not None and recommended > 0:
        floor = min(floor, math.ceil(round(obs.ready_replicas * config.burst_floor_max_step, 9)))
        if floor > recommended:
            burst_factors += ((now, min(floor / recommended, config.burst_floor_max_step)),)
    factor_window_s = BURST_FACTOR_WINDOWS * config.burst_window_s
    burst_factors = _prune(burst_factors, now, factor_window_s)
    factor = held_burst_factor(burst_factors, now, factor_window_s, config.burst_floor_fade)
    if factor > 1 and recommended > 0:
        boosted = math.ceil(round(recommended * factor, 9))
        if boosted > recommended:
            note = (f"× {factor:.2f} → {boosted} replicas: bursts in the last {factor_window_s:.0f} s "
                    "queued past the TTFT target at the size the rate alone asked for")
            return boosted, burst_factors, (note,)
    return recommended, burst_factors, ()


def limits_stage(recommended: int, config: ScalingConfig) -> tuple[int, str | None, tuple[str, ...]]:
    """Stage 4, limits: maxReplicas and the GPU budget. Returns (count, which limit held it, notes)."""
    limit, limited_by = replica_limit(config)
    if recommended > limit:
        return limit, limited_by, (_limit_note(limited_by, limit, config),)
    return recommended, None, ()


def scale_down_stage(obs: Observation, config: ScalingConfig, recommended: int,
                     recommendations: tuple[tuple[float, int], ...], first_seen_s: float
                     ) -> tuple[int, tuple[str, ...]]:
    """Stage 5, scale-down: up at once; down only to the highest recommendation of the
    stabilisation window, by bounded steps, never with a harmful queue, never before one
    window of history. Scale-to-zero, after its own idle window, goes through the same window."""
    now, current = obs.time_s, obs.current_replicas
    limit, _ = replica_limit(config)
    notes: list[str] = []
    target = recommended
    # scale-to-zero waits out its idle window and then, like every scale-down, the stabilisation
    # window (a model woken by hand is not sent straight back to zero)
    if recommended < current and now - first_seen_s < config.scale_down_stabilization_s:
        notes.append(f"held at {current}: less than one {config.scale_down_stabilization_s:.0f} s "
                     "scale-down window of history yet")
        target = current
    elif recommended < current:
        stabilised = max(r for _, r in recommendations)
        step = scale_down_step(current, config.max_scale_down_step)
        target = min(current, max(stabilised, current - step))
        if stabilised >= current:
            notes.append(f"held at {current}: {stabilised} recommended within the "
                         f"{config.scale_down_stabilization_s:.0f} s scale-down window")
        elif target > stabilised:
            notes.append(f"stepped down from {current} to {target} (at most {step} per decision)")
        if _queue_hurts(obs, config.slo) and target < current:
            target = current
            notes.append(f"{obs.waiting:.0f} requests waiting with TTFT above target: not scaling down")
    return min(target, limit), tuple(notes)


def predicted_latency(obs: Observation, config: ScalingConfig, profile: EngineProfile, target: int,
                      sizing: Sizing) -> tuple[float | None, float | None]:
    """The TTFT and ITL p95 the model expects at the target size (reported, never decided on)."""
    rate = obs.arrival_rate_rps
    if rate > 0 and target > 0 and sizing.mean_prompt + sizing.mean_output <= profile.kv_cache_tokens:
        per_replica = rate * config.peak_factor / target
        if sizing.prompt is not None:  # the inputs the capacity was solved with (cached, never optimistic)
            prompt, output, mix = sizing.prompt, sizing.output, sizing.prompt_mix
        else:
            prompt, output, mix = sizing.mean_prompt, sizing.mean_output, _mix(obs.prompt_mix)
        return predicted_latency_s(profile, per_replica, prompt, output, mix)
    if rate > 0:
        return math.inf, None
    return None, None


def check_observation(obs: Observation) -> str | None:
    """Why the observation cannot be decided on (None: it can); a bad replica count raises."""
    if isinstance(obs.current_replicas, bool) or not isinstance(obs.current_replicas, int) or obs.current_replicas < 0:
        raise ValueError(f"current_replicas must be an integer >= 0, got {obs.current_replicas!r}")
    if not obs.metrics_available:
        return obs.reason_unavailable or "collector reported none"
    rate = obs.arrival_rate_rps
    if not _usable(rate) or rate > MAX_ARRIVAL_RPS:  # absurd rates are refused like NaN, never remembered
        return f"arrival_rate_rps is {rate!r}"
    if rate > 0:
        for name in ("mean_prompt_tokens", "mean_output_tokens"):
            if not _usable(getattr(obs, name)) or getattr(obs, name) > MAX_TOKENS:
                return f"{name} is {getattr(obs, name)!r}"
    for name in ("running", "waiting"):
        if getattr(obs, name) is not None and not _usable(getattr(obs, name)):
            return f"{name} is {getattr(obs, name)!r}"
    return None


# -- the policy ---------------------------------------------------------------------------------


def decide(
    obs: Observation, config: ScalingConfig, state: PolicyState, profile: EngineProfile
) -> tuple[Decision, PolicyState]:
    """One autoscaling decision and the state to pass to the next call: the stages above in turn
    (wake from zero, history, forecast + steady capacity + burst allowance, observed queue, limits,
    scale-down). Wake from zero comes before the metrics check: at zero replicas none are scraped."""
    why = check_observation(obs)  # raises on a bad replica count, before anything else
    woken = wake_from_zero(obs, config, state)
    if woken is not None:
        return woken
    if why is not None:
        return _fail_safe(obs, config, state, why)
    history = update_history(obs, config, state)
    now, rate = history.now_s, obs.arrival_rate_rps
    sizing = (busy_sizing(obs, config, state, history, profile) if rate > 0
              else idle_sizing(obs, config, history, profile))
    recommended, burst_factors, burst_notes = burst_factor_stage(obs, config, state, sizing.recommended)
    recommended, limited, limit_notes = limits_stage(recommended, config)
    recommendations = _prune(state.recommendations + ((now, recommended),), now, config.scale_down_stabilization_s)
    target, down_notes = scale_down_stage(obs, config, recommended, recommendations, history.first_seen_s)
    predicted_ttft, predicted_itl = predicted_latency(obs, config, profile, target, sizing)

    reason = "; ".join((sizing.head,) + sizing.notes + burst_notes + limit_notes + down_notes)
    capacity = sizing.capacity
    new_state = PolicyState(
        recommendations=recommendations,
        rate_samples=history.rate_samples,
        last_scale_time_s=now if target != obs.current_replicas else state.last_scale_time_s,
        last_traffic_time_s=history.last_traffic_s,
        first_seen_time_s=history.first_seen_s,
        burst_samples=history.burst_samples,
        token_samples=history.token_samples,
        burst_factors=burst_factors,
        last_replicas=obs.current_replicas,
        capacity_inputs=((sizing.prompt, sizing.output, sizing.prompt_mix) if sizing.prompt is not None
                         else state.capacity_inputs),
        last_capacity=((capacity, rate, sizing.prompt, sizing.output) if rate > 0 and capacity is not None
                       and capacity > 0 and sizing.mean_prompt is not None else state.last_capacity),
    )
    decision = Decision(target, reason, predicted_ttft, predicted_itl, capacity, limited,
                        metrics_ok=True, forecast_rate_rps=sizing.forecast)
    return decision, new_state


def _mix(prompt_mix: tuple[tuple[float, float], ...] | None) -> tuple[tuple[float, float], ...] | None:
    """A usable, hashable prompt mix (positive total probability) or None."""
    if not prompt_mix:
        return None
    pairs = tuple((float(t), float(p)) for t, p in prompt_mix)
    if not all(math.isfinite(v) and v >= 0 for pair in pairs for v in pair) or not sum(p for _, p in pairs) > 0:
        return None
    return quantize_mix(pairs) or None


def _queue_hurts(obs: Observation, slo: Slo) -> bool:
    """Requests are queueing and the observed TTFT is over target (or unknown)."""
    if not (obs.waiting or 0) > 0:
        return False
    if slo.ttft_ms is None or obs.observed_ttft_p95_s is None or not math.isfinite(obs.observed_ttft_p95_s):
        return True
    return obs.observed_ttft_p95_s > slo.ttft_ms / 1000.0
