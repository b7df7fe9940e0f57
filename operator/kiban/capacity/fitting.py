"""Fit the workload and the engine profile from Prometheus numbers, with the profile as prior.

Inputs are plain numbers (the collector turns PromQL results into them): histogram windows
(cumulative buckets, sum and count, as vLLM exports `vllm:request_prompt_tokens` and
friends), and pairs of observations. alpha/beta come from (running batch, ITL ms) pairs,
gamma/delta from (prompt tokens x batch, prefill ms) pairs, each by ordinary least squares.
The fitted values are blended with the prior profile by sample count,
w = n / (n + prior_samples), so a handful of noisy samples barely moves a good prior while
a long window replaces it; confidence (0-1) is w x R^2 averaged over the two fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kiban.capacity.engine_profile import EngineProfile

REFIT_NOTE = " Re-fitted online from "  # appended once to the prior's source, replaced on re-fit
MIN_ALPHA_MS = 1e-3  # decode steps take time: a fitted alpha is floored here, never 0 or below


@dataclass(frozen=True)
class HistogramWindow:
    """A Prometheus histogram (or its increase over a window): cumulative buckets, sum, count."""

    buckets: tuple[tuple[float, float], ...]  # (le upper bound, cumulative count), le ascending
    sum: float
    count: float

    def __post_init__(self) -> None:
        bounds = [le for le, _ in self.buckets]
        if bounds != sorted(bounds):
            raise ValueError("buckets must be ordered by their le bound")
        counts = [c for _, c in self.buckets]
        if any(b < a - 1e-9 for a, b in zip(counts, counts[1:])):
            raise ValueError("buckets must hold cumulative counts (non-decreasing)")
        if self.count < 0 or math.isnan(self.count):
            raise ValueError(f"count must be >= 0, got {self.count!r}")


def histogram_delta(later: HistogramWindow, earlier: HistogramWindow) -> HistogramWindow:
    """What a histogram gained between two scrapes; a counter reset is an error, not a negative."""
    if [le for le, _ in later.buckets] != [le for le, _ in earlier.buckets]:
        raise ValueError("buckets differ between the two histograms")
    if later.count < earlier.count or later.sum < earlier.sum:
        raise ValueError("histogram went backwards (counter reset): use the later window alone")
    return HistogramWindow(
        buckets=tuple((le, a - b) for (le, a), (_, b) in zip(later.buckets, earlier.buckets)),
        sum=later.sum - earlier.sum,
        count=later.count - earlier.count,
    )


def histogram_mean(window: HistogramWindow) -> float | None:
    """sum / count; None when nothing was observed (0/0 is not a mean)."""
    return window.sum / window.count if window.count > 0 else None


def histogram_quantile(window: HistogramWindow, quantile: float) -> float | None:
    """Prometheus histogram_quantile: linear inside the bucket, the last finite bound for +Inf."""
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile!r}")
    if not window.buckets or window.buckets[-1][1] <= 0:
        return None
    rank = quantile * window.buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for le, cumulative in window.buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return lower_bound
            if cumulative == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (cumulative - lower_count)
        lower_bound, lower_count = le, cumulative
    return lower_bound


def rate_per_s(count_delta: float, window_s: float) -> float:
    """Events per second from a counter's increase over window_s."""
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s!r}")
    if count_delta < 0:
        raise ValueError(f"count_delta must be >= 0 (counter reset?), got {count_delta!r}")
    return count_delta / window_s


@dataclass(frozen=True)
class WorkloadEstimate:
    """What the policy needs about traffic: rate and mean request shape."""

    arrival_rate_rps: float
    mean_prompt_tokens: float | None  # None when no request finished in the window
    mean_output_tokens: float | None


def estimate_workload(
    prompt_tokens: HistogramWindow, output_tokens: HistogramWindow, window_s: float,
    request_count: float | None = None,
) -> WorkloadEstimate:
    """Rate and token means from one window of the prompt/generation token histograms.

    The prompt histogram counts one observation per request, so its count delta is the
    request count unless a counter (e.g. vllm:request_success) is given.
    """
    count = prompt_tokens.count if request_count is None else request_count
    return WorkloadEstimate(
        arrival_rate_rps=rate_per_s(count, window_s),
        mean_prompt_tokens=histogram_mean(prompt_tokens),
        mean_output_tokens=histogram_mean(output_tokens),
    )


@dataclass(frozen=True)
class LinearFit:
    """y = intercept + slope * x by least squares, with its R^2 (0 when x does not vary)."""

    intercept: float
    slope: float | None  # None when x does not vary: the slope cannot be identified
    r_squared: float
    samples: int


def fit_line(pairs: Sequence[tuple[float, float]]) -> LinearFit:
    """Ordinary least squares over finite (x, y) pairs; NaN/inf pairs are dropped."""
    clean = [(float(x), float(y)) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    n = len(clean)
    if n == 0:
        raise ValueError("no finite (x, y) pairs to fit")
    mean_x = sum(x for x, _ in clean) / n
    mean_y = sum(y for _, y in clean) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in clean)
    syy = sum((y - mean_y) ** 2 for _, y in clean)
    if sxx <= 1e-12 * max(1.0, mean_x * mean_x):
        return LinearFit(intercept=mean_y, slope=None, r_squared=0.0, samples=n)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in clean)
    slope = sxy / sxx
    r_squared = 1.0 if syy == 0 else max(0.0, min(1.0, sxy * sxy / (sxx * syy)))
    return LinearFit(intercept=mean_y - slope * mean_x, slope=slope, r_squared=r_squared, samples=n)


@dataclass(frozen=True)
class FitResult:
    """A re-fitted profile, how much to trust it, and the raw fits behind it."""

    profile: EngineProfile
    confidence: float  # 0: the prior alone; 1: many samples on a straight line
    decode_fit: LinearFit | None  # alpha = intercept, beta = slope
    prefill_fit: LinearFit | None  # gamma = intercept, delta = slope


def _blend(prior_intercept: float, prior_slope: float, fit: LinearFit | None, prior_samples: float,
           floor: float) -> tuple[float, float, float]:
    """(intercept, slope, confidence) of a fit blended into its prior by sample count."""
    if fit is None:
        return prior_intercept, prior_slope, 0.0
    weight = fit.samples / (fit.samples + prior_samples)
    if fit.slope is None:  # only the level is known: keep the prior slope, move the intercept
        level = fit.intercept
        # the prior's line through the observed x is unknown here, so blend the level only
        return max(floor, (1 - weight) * prior_intercept + weight * level), prior_slope, 0.0
    slope = max(0.0, (1 - weight) * prior_slope + weight * fit.slope)
    intercept = max(floor, (1 - weight) * prior_intercept + weight * fit.intercept)
    return intercept, slope, weight * fit.r_squared


def fit_profile(
    prior: EngineProfile,
    decode_pairs: Sequence[tuple[float, float]] = (),
    prefill_pairs: Sequence[tuple[float, float]] = (),
    prior_samples: float = 50.0,
) -> FitResult:
    """Re-fit alpha, beta (from (running batch, ITL ms)) and gamma, delta (from (prompt tokens x
    batch, prefill ms)) around the prior profile; the other fields are kept."""
    if not prior_samples > 0:
        raise ValueError(f"prior_samples must be > 0, got {prior_samples!r}")
    decode_fit = fit_line(decode_pairs) if decode_pairs else None
    prefill_fit = fit_line(prefill_pairs) if prefill_pairs else None
    alpha, beta, decode_conf = _blend(prior.alpha_ms, prior.beta_ms, decode_fit, prior_samples, MIN_ALPHA_MS)
    gamma, delta, prefill_conf = _blend(prior.gamma_ms, prior.delta_ms, prefill_fit, prior_samples, 0.0)
    profile = replace(
        prior, alpha_ms=alpha, beta_ms=beta, gamma_ms=gamma, delta_ms=delta,
        source=f"{prior.source.split(REFIT_NOTE)[0]}{REFIT_NOTE}{decode_fit.samples if decode_fit else 0} decode and "
               f"{prefill_fit.samples if prefill_fit else 0} prefill observations.",
    )
    return FitResult(profile=profile, confidence=(decode_conf + prefill_conf) / 2.0,
                     decode_fit=decode_fit, prefill_fit=prefill_fit)


# -- online learning: the engine's step times and its cold start, the profile as prior -----------

PRIOR_RELATIVE_SD = 0.25  # a datasheet parameter is known to about ±25 % (one sd) before evidence
SAMPLING_CV = 1.0  # one ITL or prefill time scatters about its mean by about its own size
MODEL_ERROR = 0.10  # the linear step model's own error on a window mean (docs/capacity-model.md: ~10 %)
FORGET_S = 1800.0  # evidence fades with this time constant, so the fit follows a drifting engine
FIT_FIELDS = ("alpha_ms", "gamma_ms", "beta_ms", "delta_ms")  # the order of EngineFit.mean


@dataclass(frozen=True)
class EngineWindow:
    """One engine's vLLM counters over one window (increases, and the batch's time average).

    From vLLM's own series: `vllm:num_requests_running` (avg over the window),
    `vllm:inter_token_latency_seconds` (_sum, _count), `vllm:iteration_tokens_total_count`
    (engine steps), `vllm:prompt_tokens_total` (prompt tokens prefilled),
    `vllm:request_prefill_time_seconds` and `vllm:request_prompt_tokens` (_sum, _count, observed
    together when a request finishes)."""

    mean_running: float
    itl_sum_s: float
    itl_count: float
    steps: float
    prompt_tokens: float
    prefill_sum_s: float
    prefill_count: float
    request_prompt_sum: float
    request_prompt_count: float


def engine_rows(window: EngineWindow, max_num_batched_tokens: int = 2048
                ) -> list[tuple[tuple[float, float, float, float], float, float]]:
    """Linear observations (features over (alpha, gamma, beta, delta), y in ms, samples) of a window.

    A decoding token's gap is the step it rode in: alpha + beta D + delta P, with D the batch and
    P the prompt tokens per step (prefill riding along). A request's prefill spans k steps
    (k = prompt / token budget, at least 1), each paying the fixed cost and the batch's decode
    cost; together they prefill its own prompt or, when the steps are fuller than that, k steps
    of the average prompt tokens per step (others' prompts riding in the same steps)."""
    rows = []
    d = max(0.0, window.mean_running)
    per_step = window.prompt_tokens / window.steps if window.steps > 0 else 0.0
    if window.itl_count > 0 and window.itl_sum_s > 0:
        rows.append(((1.0, 0.0, d, per_step), 1000.0 * window.itl_sum_s / window.itl_count, window.itl_count))
    if window.prefill_count > 0 and window.request_prompt_count > 0 and window.prefill_sum_s > 0:
        prompt = window.request_prompt_sum / window.request_prompt_count
        k = max(1.0, prompt / max_num_batched_tokens)
        rows.append(((0.0, k, k * d, max(prompt, k * per_step)), 1000.0 * window.prefill_sum_s / window.prefill_count,
                     window.prefill_count))
    return [row for row in rows if all(math.isfinite(v) for v in row[0]) and math.isfinite(row[1])]


@dataclass(frozen=True)
class EngineEvidence:
    """Sufficient statistics of the weighted least-squares fit (information matrix and vector),
    decayed with time, so one tick's update is O(1) whatever the history."""

    information: tuple[tuple[float, ...], ...] = ((0.0,) * 4,) * 4
    vector: tuple[float, ...] = (0.0,) * 4
    time_s: float | None = None
    observations: float = 0.0  # decayed count of requests/tokens behind the evidence


def add_evidence(evidence: EngineEvidence, windows: Sequence[EngineWindow], now_s: float,
                 forget_s: float = FORGET_S) -> EngineEvidence:
    """The evidence decayed to now_s plus these windows' rows. Each row's noise is relative:
    sd = y * sqrt(SAMPLING_CV^2 / samples + MODEL_ERROR^2), so a window of few requests barely
    counts and many windows cannot out-vote the model's own error."""
    decay = 1.0 if evidence.time_s is None else math.exp(-max(0.0, now_s - evidence.time_s) / forget_s)
    info = np.array(evidence.information, dtype=float) * decay
    vec = np.array(evidence.vector, dtype=float) * decay
    count = evidence.observations * decay
    for window in windows:
        for features, y, samples in engine_rows(window):
            if not y > 0 or not samples > 0:
                continue
            x = np.array(features)
            variance = (y * y) * (SAMPLING_CV ** 2 / samples + MODEL_ERROR ** 2)
            info += np.outer(x, x) / variance
            vec += x * y / variance
            count += samples
    return EngineEvidence(tuple(map(tuple, info.tolist())), tuple(vec.tolist()), now_s, count)


@dataclass(frozen=True)
class EngineFit:
    """The prior, the fitted profile and each fitted parameter's posterior sd (same units)."""

    prior: EngineProfile
    profile: EngineProfile
    sd: dict[str, float]
    observations: float

    def relative_sd(self, name: str) -> float:
        value = getattr(self.profile, name)
        return self.sd[name] / value if value else math.inf


def fit_engine(prior: EngineProfile, evidence: EngineEvidence, relative_sd: float = PRIOR_RELATIVE_SD) -> EngineFit:
    """Posterior mean of (alpha, gamma, beta, delta): Gaussian prior at the profile (sd =
    relative_sd x value), linear evidence; evidence overrides the prior as it accumulates.
    Parameters stay within [0.1, 10] x the prior (a step never costs nothing)."""
    mean0 = np.array([getattr(prior, name) for name in FIT_FIELDS], dtype=float)
    precision0 = np.diag(1.0 / np.maximum(relative_sd * mean0, 1e-9) ** 2)
    info = precision0 + np.array(evidence.information, dtype=float)
    vec = precision0 @ mean0 + np.array(evidence.vector, dtype=float)
    covariance = np.linalg.inv(info)
    mean = np.clip(covariance @ vec, 0.1 * mean0, 10.0 * mean0)
    sd = np.sqrt(np.maximum(np.diag(covariance), 0.0))
    profile = replace(prior, **{name: float(v) for name, v in zip(FIT_FIELDS, mean)})
    return EngineFit(prior=prior, profile=profile, sd={n: float(s) for n, s in zip(FIT_FIELDS, sd)},
                     observations=evidence.observations)


PROFILE_GRID_RATIO = 1.05  # a fitted parameter is snapped to this geometric grid (capacity cache hits)


def snapped_profile(profile: EngineProfile, ratio: float = PROFILE_GRID_RATIO) -> EngineProfile:
    """The profile with alpha, beta, gamma, delta on a geometric grid: small moves of a fit give
    the same profile (and the same cached capacity); the grid is fine enough not to matter."""
    def snap(value: float) -> float:
        if not value > 0:
            return value
        return round(ratio ** round(math.log(value) / math.log(ratio)), 6)
    return replace(profile, **{name: snap(getattr(profile, name)) for name in FIT_FIELDS})


# -- cold start: creation to Ready of the model's own pods ----------------------------------------

STARTUP_MEMORY = 10  # creation-to-Ready durations kept per revision (the newest)


@dataclass(frozen=True)
class PodStart:
    """A pod of the model: its revision (pod-template hash), creation time and first Ready time."""

    revision: str
    created_s: float
    ready_s: float | None  # None: not Ready yet


@dataclass(frozen=True)
class StartupMemory:
    """Creation-to-Ready durations seen so far, per revision (newest last), and pods already counted."""

    durations: tuple[tuple[str, float], ...] = ()
    counted: frozenset[tuple[str, float]] = frozenset()


def remember_starts(memory: StartupMemory, pods: Sequence[PodStart], keep: int = STARTUP_MEMORY) -> StartupMemory:
    """Add the pods that became Ready since the last call (each pod once, by revision and creation)."""
    durations = list(memory.durations)
    counted = set(memory.counted)
    for pod in sorted(pods, key=lambda p: (p.ready_s if p.ready_s is not None else math.inf)):
        key = (pod.revision, pod.created_s)
        if pod.ready_s is None or key in counted or pod.ready_s < pod.created_s:
            continue
        counted.add(key)
        durations.append((pod.revision, pod.ready_s - pod.created_s))
    kept: list[tuple[str, float]] = []
    for revision in dict.fromkeys(r for r, _ in durations):
        kept += [d for d in durations if d[0] == revision][-keep:]
    live = {(p.revision, p.created_s) for p in pods}
    return StartupMemory(tuple(kept), frozenset(k for k in counted if k in live))


@dataclass(frozen=True)
class StartupEstimate:
    """The look-ahead a scale-up needs: prior, learned value, and what it rests on."""

    prior_s: float
    value_s: float
    samples: int
    revision: str | None
    waiting_longest_s: float = 0.0  # the oldest pod of the revision still not Ready


def estimate_startup(memory: StartupMemory, pods: Sequence[PodStart], prior_s: float, now_s: float,
                     revision: str | None = None) -> StartupEstimate:
    """Creation to Ready for the revision (the newest seen when None): the longest of its recent
    pods, since a look-ahead must cover the slow ones; a pod still starting for longer than that
    raises it (a censored observation), so a prior that is far too short is corrected before
    any pod is Ready. Without any pod of the revision, the other revisions', else the prior."""
    if revision is None:
        revision = memory.durations[-1][0] if memory.durations else (pods[-1].revision if pods else None)
    own = [d for r, d in memory.durations if r == revision]
    base = own or [d for _, d in memory.durations]
    value = max(base) if base else float(prior_s)
    waiting = max((now_s - p.created_s for p in pods if p.ready_s is None and p.revision == revision), default=0.0)
    return StartupEstimate(prior_s=float(prior_s), value_s=max(value, waiting), samples=len(own), revision=revision,
                           waiting_longest_s=waiting)
