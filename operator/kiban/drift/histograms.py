"""Prometheus histogram buckets as vLLM exposes them, and their per-window deltas.

Drift is computed from what Prometheus already holds: cumulative `_bucket{le=...}` counters.
Two scrapes of the same series give the requests of the window between them; summing series
gives the model's window over all pods. Everything here is pure.

Bucket boundaries follow vLLM's `vllm/v1/metrics/loggers.py` (the 0.x line up to 0.33):
token-count histograms use `build_1_2_5_buckets(max_model_len)`, latency histograms fixed lists.
The simulator (serving/kiban_serving/sim) must expose the same boundaries, so it should build
them from these functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

INF = math.inf

# vLLM 0.33 `vllm:time_to_first_token_seconds`
TTFT_SECONDS_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
# vLLM 0.33 `vllm:inter_token_latency_seconds` (and the older `time_per_output_token_seconds`)
ITL_SECONDS_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
# vLLM 0.33 e2e / queue / prefill / decode / inference request time histograms
REQUEST_LATENCY_SECONDS_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to and including max_value, as vLLM builds token buckets."""
    if max_value < 1:
        raise ValueError(f"max_value must be >= 1, got {max_value}")
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


def token_count_buckets(max_model_len: int) -> tuple[float, ...]:
    """Buckets of `vllm:request_prompt_tokens` and `vllm:request_generation_tokens`."""
    return tuple(float(b) for b in build_1_2_5_buckets(max_model_len))


def ttft_seconds_buckets() -> tuple[float, ...]:
    return TTFT_SECONDS_BUCKETS


def itl_seconds_buckets() -> tuple[float, ...]:
    return ITL_SECONDS_BUCKETS


def request_latency_seconds_buckets() -> tuple[float, ...]:
    """Buckets of vLLM's request e2e/queue/prefill/decode/inference time histograms."""
    return REQUEST_LATENCY_SECONDS_BUCKETS


def prefill_seconds_per_token_buckets() -> tuple[float, ...]:
    """Kiban's own buckets for prefill seconds per prompt token (1 µs .. 0.1 s, 1-2-5).

    vLLM 0.33 exports no per-request prefill-time-per-token histogram (an earlier
    `vllm:time_per_prefill_token_request_seconds` started at 1 ms, above a modern GPU's
    ~0.1 ms/token), so whoever produces this signal (simulator, collector) uses these.
    """
    return tuple(float(f"{m}e{e}") for e in range(-6, -1) for m in (1, 2, 5)) + (0.1,)


@dataclass(frozen=True)
class BinnedHistogram:
    """Per-bin counts of one window: bin i is (upper_bounds[i-1], upper_bounds[i]], last is +Inf.

    `total_sum` is the histogram's `_sum` delta when known (exact mean for messages).
    """

    upper_bounds: tuple[float, ...]
    counts: tuple[float, ...]
    total_sum: float | None = None

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.upper_bounds) + 1:
            raise ValueError(
                f"counts must have len(upper_bounds)+1 = {len(self.upper_bounds) + 1} entries "
                f"(the last is the +Inf bin), got {len(self.counts)}"
            )
        if any(b <= a for a, b in zip(self.upper_bounds, self.upper_bounds[1:])):
            raise ValueError(f"upper_bounds must be strictly increasing: {self.upper_bounds}")
        if any(c < 0 for c in self.counts):
            raise ValueError(f"counts must be non-negative, got {self.counts}")

    @property
    def total(self) -> float:
        return float(sum(self.counts))

    def as_array(self) -> np.ndarray:
        return np.asarray(self.counts, dtype=float)

    def mean(self) -> float:
        """Exact mean from `_sum` when known, else the binned estimate (bin midpoints)."""
        if self.total <= 0:
            return math.nan
        if self.total_sum is not None:
            return self.total_sum / self.total
        return float(np.dot(bin_midpoints(self.upper_bounds), self.as_array()) / self.total)


def empty_histogram(upper_bounds: Sequence[float]) -> BinnedHistogram:
    return BinnedHistogram(tuple(float(b) for b in upper_bounds), (0.0,) * (len(upper_bounds) + 1), 0.0)


def bin_midpoints(upper_bounds: Sequence[float]) -> np.ndarray:
    """Representative value per bin: midpoint of (lower, upper]; the first bin starts at 0 and
    the +Inf bin is represented by its lower edge (the largest finite bound)."""
    bounds = np.asarray(upper_bounds, dtype=float)
    lowers = np.concatenate(([0.0], bounds[:-1]))
    mids = (lowers + bounds) / 2.0
    return np.concatenate((mids, [bounds[-1]]))


def _le_value(le: str | float) -> float:
    if isinstance(le, str):
        text = le.strip()
        if text in ("+Inf", "Inf", "inf", "+inf"):
            return INF
        return float(text)
    return float(le)


def parse_cumulative(buckets: Iterable[tuple[str | float, float]]) -> tuple[tuple[float, ...], np.ndarray]:
    """(le, cumulative count) pairs, in any order, to (finite bounds, cumulative counts incl. +Inf).

    Raises ValueError naming `le` when +Inf is missing or a bound repeats, and naming the
    count when the cumulative counts decrease with le (not a valid Prometheus histogram).
    """
    pairs = sorted((_le_value(le), float(count)) for le, count in buckets)
    if not pairs or pairs[-1][0] != INF:
        raise ValueError("histogram buckets must include le=\"+Inf\"")
    les = [le for le, _ in pairs]
    if len(set(les)) != len(les):
        raise ValueError(f"histogram buckets repeat an le value: {les}")
    cumulative = np.array([count for _, count in pairs], dtype=float)
    if np.any(np.diff(cumulative) < 0):
        raise ValueError(f"cumulative bucket counts must not decrease with le: {cumulative.tolist()}")
    return tuple(les[:-1]), cumulative


def window_counts(
    earlier: Iterable[tuple[str | float, float]] | None,
    later: Iterable[tuple[str | float, float]],
    earlier_sum: float | None = None,
    later_sum: float | None = None,
) -> BinnedHistogram:
    """Per-bin counts of the requests observed between two scrapes of one series.

    `earlier` None means the series is new (a pod that started in the window). A counter
    reset (any cumulative count lower than before: the pod restarted) makes the later scrape
    the whole window, as Prometheus' increase() does.
    """
    bounds, later_cum = parse_cumulative(later)
    if earlier is None:
        earlier_cum = np.zeros_like(later_cum)
        earlier_sum = 0.0 if later_sum is not None else None
    else:
        earlier_bounds, earlier_cum = parse_cumulative(earlier)
        if earlier_bounds != bounds:
            raise ValueError(f"le buckets differ between scrapes: {earlier_bounds} vs {bounds}")
    delta = later_cum - earlier_cum
    reset = bool(np.any(delta < 0)) or (
        earlier_sum is not None and later_sum is not None and later_sum < earlier_sum
    )
    cumulative = later_cum if reset else delta
    per_bin = np.diff(np.concatenate(([0.0], cumulative)))
    window_sum = None
    if later_sum is not None and earlier_sum is not None:
        window_sum = later_sum if reset else later_sum - earlier_sum
    return BinnedHistogram(bounds, tuple(float(c) for c in per_bin), window_sum)


def merge_histograms(histograms: Iterable[BinnedHistogram]) -> BinnedHistogram:
    """Sum per-bin counts over series (pods); all must share bucket bounds."""
    items = list(histograms)
    if not items:
        raise ValueError("merge_histograms needs at least one histogram")
    bounds = items[0].upper_bounds
    for item in items[1:]:
        if item.upper_bounds != bounds:
            raise ValueError(f"upper_bounds differ between merged histograms: {bounds} vs {item.upper_bounds}")
    counts = np.sum([item.as_array() for item in items], axis=0)
    sums = [item.total_sum for item in items]
    total_sum = None if any(s is None for s in sums) else float(sum(sums))  # type: ignore[arg-type]
    return BinnedHistogram(bounds, tuple(float(c) for c in counts), total_sum)


def window_counts_by_series(
    earlier: Mapping[str, Iterable[tuple[str | float, float]]],
    later: Mapping[str, Iterable[tuple[str | float, float]]],
) -> BinnedHistogram:
    """Window counts summed over series keyed by identity (e.g. pod). A series missing from
    `earlier` is new; a series missing from `later` is gone and contributes nothing."""
    if not later:
        raise ValueError("later scrape holds no series")
    return merge_histograms(window_counts(earlier.get(key), buckets) for key, buckets in later.items())


def bin_samples(samples: Sequence[float] | np.ndarray, upper_bounds: Sequence[float]) -> BinnedHistogram:
    """Per-bin counts of raw observations, with Prometheus' `le` (<=) semantics."""
    values = np.asarray(samples, dtype=float)
    bounds = np.asarray(upper_bounds, dtype=float)
    index = np.searchsorted(bounds, values, side="left")  # first bound >= value
    counts = np.bincount(index, minlength=len(bounds) + 1)
    return BinnedHistogram(tuple(float(b) for b in bounds), tuple(float(c) for c in counts), float(values.sum()))


def cumulative_buckets(histogram: BinnedHistogram) -> list[tuple[str, float]]:
    """The `_bucket` series a Prometheus client would expose for these counts: (le, cumulative)."""
    cumulative = np.cumsum(histogram.as_array())
    les = [_format_le(b) for b in histogram.upper_bounds] + ["+Inf"]
    return [(le, float(c)) for le, c in zip(les, cumulative)]


def _format_le(bound: float) -> str:
    return repr(float(bound))
