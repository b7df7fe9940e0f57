"""Two-sample drift statistics on binned counts (numpy only).

All functions take per-bin counts of a reference window and a current window over the same
bins (as `histograms.BinnedHistogram.counts` holds them) and return plain floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Floor for bin proportions in PSI. An empty bin would make ln(p/q) infinite; 1e-4 is the
# usual choice (one request in ten thousand): a bin holding 1 % of the current window and none
# of the reference then adds 0.01 * ln(0.01 / 1e-4) ~ 0.046, well under the 0.2 alarm.
PSI_EPSILON = 1e-4


def _proportions(counts: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(counts, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of bin counts")
    if np.any(values < 0) or not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must hold finite, non-negative counts")
    total = values.sum()
    if total <= 0:
        raise ValueError(f"{name} holds no observations")
    return values / total


def _pair(reference: Sequence[float], current: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = _proportions(reference, "reference")
    q = _proportions(current, "current")
    if p.shape != q.shape:
        raise ValueError(f"reference and current must have the same bins: {p.size} vs {q.size}")
    return p, q


def population_stability_index(
    reference: Sequence[float], current: Sequence[float], epsilon: float = PSI_EPSILON
) -> float:
    """PSI = sum (q - p) ln(q / p), proportions floored at `epsilon` (see PSI_EPSILON).

    Rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 a significant shift.
    """
    p, q = _pair(reference, current)
    return float(_psi_rows(p[None, :], q[None, :], epsilon)[0])


def ks_statistic(reference: Sequence[float], current: Sequence[float]) -> float:
    """Kolmogorov-Smirnov D: the largest |CDF difference| at the bin edges.

    Equals the raw-sample KS statistic when every sample sits on a bin edge; otherwise it is
    a lower bound of it (the CDFs can differ more inside a bin than at its edges).
    """
    p, q = _pair(reference, current)
    return float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))


def kolmogorov_survival(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (limit of sqrt(n) D_n), two series forms."""
    if x <= 0:
        return 1.0
    if x < 1.18:
        # Jacobi-theta form converges fast for small x.
        k = np.arange(1, 9)
        cdf = math.sqrt(2 * math.pi) / x * float(np.sum(np.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * x * x))))
        return float(min(1.0, max(0.0, 1.0 - cdf)))
    k = np.arange(1, 101)
    terms = 2.0 * (-1.0) ** (k - 1) * np.exp(-2.0 * k * k * x * x)
    return float(min(1.0, max(0.0, float(np.sum(terms)))))


def ks_p_value(statistic: float, n_reference: float, n_current: float) -> float:
    """Asymptotic two-sample KS p-value with effective size n*m/(n+m) (Stephens' correction).

    Approximate on binned data: the binned D is at most the raw D, so this p-value is at least
    the raw one (conservative); ties at bin edges also break the continuity assumption.
    """
    if n_reference <= 0 or n_current <= 0:
        raise ValueError("n_reference and n_current must be positive")
    effective = math.sqrt(n_reference * n_current / (n_reference + n_current))
    return kolmogorov_survival((effective + 0.12 + 0.11 / effective) * statistic)


def jensen_shannon_divergence(reference: Sequence[float], current: Sequence[float]) -> float:
    """JS divergence in bits, in [0, 1]: 0 identical, 1 disjoint supports. Empty bins are fine."""
    p, q = _pair(reference, current)
    return float(_js_rows(p[None, :], q[None, :])[0])


def binned_mean_and_variance(counts: Sequence[float], midpoints: Sequence[float]) -> tuple[float, float, float]:
    """(n, mean, sample variance) treating every observation as its bin's midpoint."""
    weights = np.asarray(counts, dtype=float)
    values = np.asarray(midpoints, dtype=float)
    if weights.shape != values.shape:
        raise ValueError("counts and midpoints must have the same length")
    n = float(weights.sum())
    if n < 2:
        raise ValueError("need at least two observations for a variance")
    mean = float(np.dot(weights, values) / n)
    variance = float(np.dot(weights, (values - mean) ** 2) / (n - 1))
    return n, mean, variance


def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), for the Student t tail without scipy at runtime."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| > |t|) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def mean_shift_p_value(
    reference: Sequence[float], current: Sequence[float], midpoints: Sequence[float]
) -> tuple[float, float]:
    """Welch's t-test on binned means (TrustyAI's MeanShift): returns (t, two-sided p).

    Every observation counts as its bin's midpoint, so the variance ignores the spread inside
    bins; with 1-2-5 buckets that makes the test a coarse check on top of PSI/JS.
    """
    n1, mean1, var1 = binned_mean_and_variance(reference, midpoints)
    n2, mean2, var2 = binned_mean_and_variance(current, midpoints)
    a, b = var1 / n1, var2 / n2
    if a + b == 0:
        return (0.0, 1.0) if mean1 == mean2 else (math.copysign(math.inf, mean2 - mean1), 0.0)
    t = (mean2 - mean1) / math.sqrt(a + b)
    df = (a + b) ** 2 / ((a * a / (n1 - 1) if a else 0.0) + (b * b / (n2 - 1) if b else 0.0))
    return t, student_t_two_sided_p(t, df)


def _psi_rows(p: np.ndarray, q: np.ndarray, epsilon: float = PSI_EPSILON) -> np.ndarray:
    """PSI of each row pair of proportions (the scalar function and the noise floor share it)."""
    p, q = np.maximum(p, epsilon), np.maximum(q, epsilon)
    return np.sum((q - p) * np.log(q / p), axis=1)


def _js_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JS divergence in bits of each row pair; a bin empty in one row adds nothing for it."""
    m = (p + q) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0) / np.where(m > 0, m, 1.0)), 0.0)
        kl_q = np.where(q > 0, q * np.log2(np.where(q > 0, q, 1.0) / np.where(m > 0, m, 1.0)), 0.0)
    return np.clip((kl_p.sum(axis=1) + kl_q.sum(axis=1)) / 2.0, 0.0, 1.0)


def noise_floor(
    reference: Sequence[float], current: Sequence[float], quantile: float, draws: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """(PSI, JS) that two windows of these sizes reach by chance alone, at `quantile`.

    Why: PSI and JS grow with sampling noise as windows shrink (a 15-request window against a
    30-request reference reaches PSI ~2 with no shift at all), so a fixed threshold either
    alarms on every small window or misses real shifts in large ones. The floor is a parametric
    bootstrap under "no drift": both windows drawn from their pooled distribution at their own
    sizes. Seeded, so the same windows always get the same floor.
    """
    p, q = _pair(reference, current)
    n_ref = max(1, int(round(float(np.sum(reference)))))
    n_cur = max(1, int(round(float(np.sum(current)))))
    pooled = (p * n_ref + q * n_cur) / (n_ref + n_cur)
    rng = np.random.default_rng(seed)
    ref_draws = rng.multinomial(n_ref, pooled, size=draws) / n_ref
    cur_draws = rng.multinomial(n_cur, pooled, size=draws) / n_cur
    return (float(np.quantile(_psi_rows(ref_draws, cur_draws), quantile)),
            float(np.quantile(_js_rows(ref_draws, cur_draws), quantile)))
