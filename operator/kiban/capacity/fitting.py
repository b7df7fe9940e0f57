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
