"""Drift detector over windows of binned distributions: state in, state and reports out.

Per signal it keeps a reference distribution and compares each new window against it with
PSI, Jensen-Shannon, binned KS and a mean-shift t-test. A test declares drift after
`consecutive_to_declare` windows over its threshold and clears it after
`consecutive_to_clear` windows under. The signal is drifted when any of `decisive_tests` is.

Reference policies:
- "baseline": the first full window(s) starting `settle_s` after a spec-generation change
  (a rollout settling), re-captured on every new generation and, by default, right after a
  declared drift (the new mix becomes the normal once the capacity model has re-fit on it).
- "rolling": the previous `rolling_windows` windows.

Workload signals (token counts) say the request mix moved: the capacity model must re-fit.
Service-time signals (ITL, prefill seconds per prompt token) are only compared at comparable
load; drift there without workload drift is the engine getting slower, and right after a spec
change it is reported as a performance regression.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, Literal, TypeVar

from kiban.drift import stats
from kiban.drift.histograms import BinnedHistogram, bin_midpoints, merge_histograms

T = TypeVar("T")

WORKLOAD_SIGNALS = ("prompt_tokens", "generation_tokens")
SERVICE_TIME_SIGNALS = ("itl_seconds", "prefill_seconds_per_token")
SIGNALS = WORKLOAD_SIGNALS + SERVICE_TIME_SIGNALS
TESTS = ("psi", "js", "ks", "mean_shift")
TEST_LABELS = {"psi": "PSI", "js": "JS", "ks": "KS", "mean_shift": "mean shift"}

ReferencePolicy = Literal["baseline", "rolling"]
SignalKind = Literal["workload", "service_time"]
ReportStatus = Literal[
    "no_reference", "baseline_captured", "insufficient_samples", "incomparable_load", "evaluated"
]


@dataclass(frozen=True)
class DriftConfig:
    """Detector settings; the defaults are the ones measured in docs/drift.md."""

    window_s: float = 120.0
    reference_policy: ReferencePolicy = "rolling"
    settle_s: float = 300.0
    baseline_windows: int = 1
    rolling_windows: int = 3
    rebaseline_after_drift: bool = True
    # Real 2-minute windows of one stationary trace reach PSI ~0.5 on their own (bursty
    # mixes), so the textbook 0.2 alarms several times an hour; 0.75 does not (docs/drift.md).
    psi_threshold: float = 0.75
    js_threshold: float = 0.1
    ks_alpha: float = 0.01
    mean_shift_alpha: float = 0.01
    decisive_tests: tuple[str, ...] = ("psi", "js")
    min_samples: int = 100
    # A window under min_samples is merged into the next one (up to this many windows in all)
    # instead of being skipped, so low traffic still gets compared, and it never becomes part
    # of a rolling reference on its own.
    max_merged_windows: int = 3
    # PSI and JS must also exceed what two windows of these sizes reach by chance alone (this
    # quantile of a bootstrap under no drift, stats.noise_floor): small windows are noisy.
    noise_quantile: float = 0.999
    consecutive_to_declare: int = 1
    consecutive_to_clear: int = 2
    load_tolerance: float = 0.25

    def __post_init__(self) -> None:
        positive = {"window_s": self.window_s, "psi_threshold": self.psi_threshold,
                    "js_threshold": self.js_threshold, "load_tolerance": self.load_tolerance}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"DriftConfig.{name} must be > 0, got {value}")
        for name in ("baseline_windows", "rolling_windows", "min_samples", "max_merged_windows",
                     "consecutive_to_declare", "consecutive_to_clear"):
            if getattr(self, name) < 1:
                raise ValueError(f"DriftConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.settle_s < 0:
            raise ValueError(f"DriftConfig.settle_s must be >= 0, got {self.settle_s}")
        for name in ("ks_alpha", "mean_shift_alpha", "noise_quantile"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"DriftConfig.{name} must be in (0, 1), got {getattr(self, name)}")
        if self.reference_policy not in ("baseline", "rolling"):
            raise ValueError(
                f"DriftConfig.reference_policy must be 'baseline' or 'rolling', got {self.reference_policy!r}"
            )
        unknown = [t for t in self.decisive_tests if t not in TESTS]
        if unknown or not self.decisive_tests:
            raise ValueError(f"DriftConfig.decisive_tests must be a non-empty subset of {TESTS}, got {self.decisive_tests}")


@dataclass(frozen=True)
class TestOutcome:
    """One test on one window: its statistic, p-value where it has one, and the verdict."""

    score: float
    over: bool
    p_value: float | None = None
    threshold: float | None = None  # what the score was held against (PSI, JS: noise floor included)


@dataclass(frozen=True)
class Streak:
    over: int = 0
    under: int = 0
    drifted: bool = False


def next_streak(streak: Streak, over: bool, config: DriftConfig) -> tuple[Streak, bool, bool]:
    """Advance a K-over / M-under streak: returns (streak, newly declared, newly cleared)."""
    over_run = streak.over + 1 if over else 0
    under_run = 0 if over else streak.under + 1
    if not streak.drifted and over_run >= config.consecutive_to_declare:
        return Streak(over_run, under_run, True), True, False
    if streak.drifted and under_run >= config.consecutive_to_clear:
        return Streak(over_run, under_run, False), False, True
    return Streak(over_run, under_run, streak.drifted), False, False


@dataclass(frozen=True)
class _Entry(Generic[T]):
    payload: T
    load: Load | None


@dataclass(frozen=True)
class SignalState(Generic[T]):
    """What one signal remembers between windows."""

    reference: _Entry[T] | None = None
    previous_reference: _Entry[T] | None = None  # the last generation's, for regressions
    capture_from: float = -math.inf  # a baseline window must start at or after this time
    pending: tuple[_Entry[T], ...] = ()
    recent: tuple[_Entry[T], ...] = ()
    carry: tuple[_Entry[T], ...] = ()  # windows too sparse alone, merged into the next one
    streaks: Mapping[str, Streak] = field(default_factory=dict)


@dataclass(frozen=True)
class SignalStep(Generic[T]):
    """The outcome of one window for one signal, before it is dressed as a DriftReport."""

    status: ReportStatus
    tests: Mapping[str, TestOutcome]
    drifted_by_test: Mapping[str, bool]
    declared_by_test: Mapping[str, bool]
    drifted: bool
    declared: bool
    cleared: bool
    reference: T | None
    compared_with_previous_generation: bool = False
    current: T | None = None  # what was compared: the window, merged with sparse ones before it


Compare = Callable[[T, T], Mapping[str, TestOutcome]]
Combine = Callable[[Sequence[T]], T]
Size = Callable[[T], float]


Load = float | tuple[float, ...]  # one measure, or several that must all be comparable


def _components(load: Load) -> tuple[float, ...]:
    return load if isinstance(load, tuple) else (load,)


def _mean_load(entries: Sequence[_Entry]) -> Load | None:
    loads = [e.load for e in entries]
    if not loads or any(load is None for load in loads):
        return None
    parts = [_components(load) for load in loads]  # type: ignore[arg-type]
    if len({len(p) for p in parts}) != 1:
        return None
    means = tuple(sum(column) / len(column) for column in zip(*parts))
    return means if isinstance(loads[0], tuple) else means[0]


def _loads_comparable(reference: Load | None, current: Load | None, tolerance: float) -> bool:
    """Every component within `tolerance` of the reference's (a component at zero is not compared)."""
    if reference is None or current is None:
        return True
    ref, cur = _components(reference), _components(current)
    if len(ref) != len(cur):
        return True
    return all(r <= 0 or abs(c / r - 1.0) <= tolerance for r, c in zip(ref, cur))


def step_signal(
    state: SignalState[T],
    payload: T,
    load: Load | None,
    window_start: float,
    config: DriftConfig,
    compare: Compare,
    combine: Combine,
    size: Size,
    needs_comparable_load: bool = False,
) -> tuple[SignalState[T], SignalStep[T]]:
    """One window for one signal, generic over the payload (binned histogram or raw samples),
    so the raw-sample KS baseline runs the very same reference and streak logic.

    A window under min_samples is carried and merged into the next (at most
    max_merged_windows in one comparison); only windows that held enough requests, alone or
    merged, join the rolling reference or become a baseline.
    """
    window = _Entry(payload, load)
    keep = config.max_merged_windows - 1  # sparse windows that may precede this one
    carried = state.carry[-keep:] if keep else ()
    entry = window
    if carried:
        entry = _Entry(combine([e.payload for e in carried] + [payload]), _mean_load(carried + (window,)))
    payload, load = entry.payload, entry.load
    sparse = size(payload) < config.min_samples
    carry_on = (carried + (window,))[-keep:] if keep else ()
    decisive = config.decisive_tests
    streaks = {t: state.streaks.get(t, Streak()) for t in TESTS}

    def unchanged(status: ReportStatus, new_state: SignalState[T], reference: T | None,
                  tests: Mapping[str, TestOutcome] | None = None, previous: bool = False) -> tuple[SignalState[T], SignalStep[T]]:
        drifted_by_test = {t: streaks[t].drifted for t in TESTS}
        return new_state, SignalStep(
            status, tests or {}, drifted_by_test, {t: False for t in TESTS},
            any(drifted_by_test[t] for t in decisive), False, False, reference, previous, payload,
        )

    # Choose the reference for this window.
    if config.reference_policy == "rolling":
        recent = state.recent[-config.rolling_windows:]
        reference = _Entry(combine([e.payload for e in recent]), _mean_load(recent)) if recent else None
        if sparse:
            next_state = replace(state, recent=recent, carry=carry_on)
        else:
            next_state = replace(state, recent=(recent + (entry,))[-config.rolling_windows:], carry=())
        if reference is None or size(reference.payload) < config.min_samples:
            return unchanged("no_reference", next_state, None)
    else:
        reference = state.reference
        next_state = replace(state, carry=carry_on if sparse else ())
        if reference is None:
            if window_start < state.capture_from:
                return unchanged("no_reference", replace(state, carry=()), None)
            if sparse:
                return unchanged("no_reference", next_state, None)
            pending = state.pending + (entry,)
            if len(pending) < config.baseline_windows:
                return unchanged("no_reference", replace(next_state, pending=pending), None)
            captured = _Entry(combine([e.payload for e in pending]), _mean_load(pending))
            captured_state = replace(next_state, reference=captured, pending=())
            previous = state.previous_reference
            tests: Mapping[str, TestOutcome] = {}
            if previous is not None and _loads_comparable(previous.load, load, config.load_tolerance):
                tests = compare(previous.payload, payload)
            return unchanged("baseline_captured", captured_state, previous.payload if previous else None,
                             tests, previous is not None and bool(tests))

    if sparse:
        return unchanged("insufficient_samples", next_state, reference.payload)
    if needs_comparable_load and not _loads_comparable(reference.load, load, config.load_tolerance):
        return unchanged("incomparable_load", next_state, reference.payload)

    tests = compare(reference.payload, payload)
    declared_by_test: dict[str, bool] = {}
    for test in TESTS:
        if test not in tests:
            declared_by_test[test] = False
            continue
        streaks[test], declared_by_test[test], _ = next_streak(streaks[test], tests[test].over, config)
    was_drifted = any(state.streaks.get(t, Streak()).drifted for t in decisive)
    drifted = any(streaks[t].drifted for t in decisive)
    declared = drifted and not was_drifted
    cleared = was_drifted and not drifted
    next_state = replace(next_state, streaks=streaks)
    if declared and config.reference_policy == "baseline" and config.rebaseline_after_drift:
        # The next full window becomes the new normal.
        next_state = replace(next_state, reference=None, pending=(), capture_from=window_start + config.window_s)
    return next_state, SignalStep(
        "evaluated", tests, {t: streaks[t].drifted for t in TESTS}, declared_by_test,
        drifted, declared, cleared, reference.payload, current=payload,
    )


def on_new_generation(state: SignalState[T], changed_at: float, config: DriftConfig) -> SignalState[T]:
    """A spec change: keep the old reference for a regression check, capture a new baseline
    after the rollout settles. The rolling policy keeps its history (the shift shows up)."""
    if config.reference_policy == "rolling":
        return state
    return replace(
        state, reference=None, pending=(), carry=(), previous_reference=state.reference or state.previous_reference,
        capture_from=changed_at + config.settle_s,
    )


# --- binned histograms --------------------------------------------------------------------


def compare_histograms(reference: BinnedHistogram, current: BinnedHistogram, config: DriftConfig) -> dict[str, TestOutcome]:
    """All four tests on two windows of the same buckets.

    PSI and JS are over when they exceed both their threshold and the noise floor of windows
    this size; the floor is only computed when a threshold is crossed (most windows are calm).
    """
    if reference.upper_bounds != current.upper_bounds:
        raise ValueError(f"histogram buckets differ: {reference.upper_bounds} vs {current.upper_bounds}")
    ref, cur = reference.counts, current.counts
    psi = stats.population_stability_index(ref, cur)
    js = stats.jensen_shannon_divergence(ref, cur)
    psi_limit, js_limit = config.psi_threshold, config.js_threshold
    if psi > psi_limit or js > js_limit:
        psi_floor, js_floor = stats.noise_floor(ref, cur, config.noise_quantile)
        psi_limit, js_limit = max(psi_limit, psi_floor), max(js_limit, js_floor)
    d = stats.ks_statistic(ref, cur)
    ks_p = stats.ks_p_value(d, reference.total, current.total)
    t, t_p = stats.mean_shift_p_value(ref, cur, bin_midpoints(reference.upper_bounds))
    return {
        "psi": TestOutcome(psi, psi > psi_limit, threshold=psi_limit),
        "js": TestOutcome(js, js > js_limit, threshold=js_limit),
        "ks": TestOutcome(d, ks_p < config.ks_alpha, ks_p),
        "mean_shift": TestOutcome(abs(t), t_p < config.mean_shift_alpha, t_p),
    }


@dataclass(frozen=True)
class WindowObservation:
    """One window of every signal's histogram (already summed over pods).

    `generation` is the FoundationModel's metadata.generation (spec changes); `load_rps` the
    window's load (a number, or a tuple of measures that must all be comparable), so service
    times are only compared at comparable load.
    """

    end_time: float
    generation: int
    histograms: Mapping[str, BinnedHistogram]
    load_rps: Load | None = None
    replicas: tuple[int, int] | None = None  # (fewest, most) ready replicas during the window


@dataclass(frozen=True)
class DriftReport:
    """The verdict for one signal after one window."""

    signal: str
    kind: SignalKind
    status: ReportStatus
    tests: Mapping[str, TestOutcome]
    drifted_by_test: Mapping[str, bool]
    declared_by_test: Mapping[str, bool]
    drifted: bool
    declared: bool
    performance_regression: bool
    reference_count: float
    current_count: float
    reference_mean: float
    current_mean: float
    message: str


@dataclass(frozen=True)
class DriftAssessment:
    """All signals after one window, and what the operator should do about it."""

    end_time: float
    reports: Mapping[str, DriftReport]
    workload_drift: bool  # the request mix moved: re-fit the capacity model
    service_time_drift: bool  # same mix and load, different engine speed
    performance_regression: bool  # service-time got slower right after a spec change
    refit_capacity_model: bool  # workload drift declared in this very window
    reason: str  # for the DriftDetected condition
    message: str


@dataclass(frozen=True)
class DetectorState:
    generation: int | None = None
    generation_changed_at: float | None = None
    signals: Mapping[str, SignalState[BinnedHistogram]] = field(default_factory=dict)
    replicas: int | None = None  # the fleet size the service-time references were built at


def signal_kind(signal: str) -> SignalKind:
    if signal in WORKLOAD_SIGNALS:
        return "workload"
    if signal in SERVICE_TIME_SIGNALS:
        return "service_time"
    raise ValueError(f"unknown drift signal {signal!r}; known: {SIGNALS}")


def _format_value(signal: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if signal.endswith("_seconds") or signal.endswith("_per_token"):
        return f"{value * 1000:.3g} ms" if signal == "prefill_seconds_per_token" else f"{value * 1000:.1f} ms"
    return f"{value:.0f} tokens"


def _limit(limit: float, configured: float) -> str:
    """The threshold as held: the configured one, or the noise floor where that was higher."""
    return f"{configured:g}" if limit <= configured else f"{limit:.3g} (noise floor at these sample sizes)"


def _format_test(test: str, outcome: TestOutcome, config: DriftConfig) -> str:
    if test == "psi":
        limit = outcome.threshold if outcome.threshold is not None else config.psi_threshold
        return f"PSI {outcome.score:.2f} {'>' if outcome.over else '<='} {_limit(limit, config.psi_threshold)}"
    if test == "js":
        limit = outcome.threshold if outcome.threshold is not None else config.js_threshold
        return f"JS {outcome.score:.4f} {'>' if outcome.over else '<='} {_limit(limit, config.js_threshold)}"
    if test == "ks":
        return f"KS D {outcome.score:.3f} p {outcome.p_value:.2g} {'<' if outcome.over else '>='} {config.ks_alpha:g}"
    return f"mean shift |t| {outcome.score:.1f} p {outcome.p_value:.2g} {'<' if outcome.over else '>='} {config.mean_shift_alpha:g}"


def _report_message(signal: str, status: ReportStatus, tests: Mapping[str, TestOutcome], drifted: bool,
                    ref_mean: float, cur_mean: float, ref_n: float, cur_n: float, config: DriftConfig) -> str:
    means = f"(mean {_format_value(signal, ref_mean).split(' ')[0]} → {_format_value(signal, cur_mean)})"
    if status == "no_reference":
        return f"{signal}: no reference yet ({cur_n:.0f} samples in window)"
    if status == "insufficient_samples":
        return f"{signal}: {cur_n:.0f} samples < min {config.min_samples}, not compared"
    if status == "incomparable_load":
        return f"{signal}: load differs from the reference's by more than {config.load_tolerance:.0%}, not compared"
    if status == "baseline_captured" and not tests:
        return f"{signal}: captured baseline of {cur_n:.0f} samples (mean {_format_value(signal, cur_mean)})"
    shown = [t for t in config.decisive_tests if t in tests and tests[t].over] or [t for t in config.decisive_tests if t in tests]
    verdict = "drifted" if drifted else "stable"
    if status == "baseline_captured":
        verdict = "vs previous generation"
    return f"{signal} {verdict}: " + ", ".join(_format_test(t, tests[t], config) for t in shown) + f" {means}"


def _regression_horizon(config: DriftConfig) -> float:
    """How long after a spec change a slow-down is blamed on the change."""
    return config.settle_s + (config.baseline_windows + config.consecutive_to_declare + 1) * config.window_s


def weighed_as_requests(histogram: BinnedHistogram, requests: float) -> BinnedHistogram:
    """A per-token histogram (ITL) with its counts scaled to sum to the window's requests.

    Why: the tokens of one request share its batch and its neighbours' prefills, so a window's
    thousands of ITL samples carry about as much evidence as its requests. Proportions, hence
    PSI and JS, are unchanged; the noise floor, min_samples and the p-values then see the
    window's real sample size (otherwise every genuine load-driven change of ITL at demo scale
    looked certain).
    """
    total = histogram.total
    if total <= 0 or requests <= 0 or requests >= total:
        return histogram
    factor = requests / total
    return BinnedHistogram(histogram.upper_bounds, tuple(c * factor for c in histogram.counts),
                           histogram.total_sum * factor if histogram.total_sum is not None else None)


def fleet_after(before: int | None, seen: tuple[int, int] | None) -> tuple[int | None, bool]:
    """(the fleet size service times are now referenced at, whether their references restart).

    Why: each engine's batch and prefill share follow the number of replicas; after a scale the
    old windows' ITL describes another fleet (even a load measured per replica misplaces a
    window that held both sizes), so service times are compared only between windows of one
    unchanged fleet size."""
    if seen is None:
        return before, False
    low, high = seen
    if low != high:
        return None, True
    return high, before is not None and before != high


def _fleet_changed_report(signal: str, histogram: BinnedHistogram, before: int | None,
                          seen: tuple[int, int] | None) -> DriftReport:
    low, high = seen or (0, 0)
    now = f"{low}-{high}" if low != high else f"{high}"
    no = {t: False for t in TESTS}
    return DriftReport(signal, "service_time", "incomparable_load", {}, no, no, False, False, False, 0.0,
                       histogram.total, math.nan, histogram.mean(),
                       f"{signal}: the fleet changed ({before if before is not None else '?'} → {now} replicas), "
                       "reference restarted")


def observe_window(
    state: DetectorState, window: WindowObservation, config: DriftConfig
) -> tuple[DetectorState, DriftAssessment]:
    """Feed one window; returns the new state and the assessment of every signal present."""
    window_start = window.end_time - config.window_s
    signals = dict(state.signals)
    generation_changed_at = state.generation_changed_at
    if state.generation != window.generation:
        generation_changed_at = window_start
        signals = {name: on_new_generation(s, window_start, config) for name, s in signals.items()}
    since_change = window.end_time - (generation_changed_at if generation_changed_at is not None else -math.inf)

    reports: dict[str, DriftReport] = {}
    requests = window.histograms.get("prompt_tokens")
    fleet, fleet_changed = fleet_after(state.replicas, window.replicas)
    for signal, histogram in window.histograms.items():
        kind = signal_kind(signal)
        if kind == "service_time" and requests is not None:
            histogram = weighed_as_requests(histogram, requests.total)
        if kind == "service_time" and fleet_changed:
            signals[signal] = SignalState(capture_from=window.end_time)
            reports[signal] = _fleet_changed_report(signal, histogram, state.replicas, window.replicas)
            continue
        signal_state = signals.get(signal)
        if signal_state is None:
            signal_state = SignalState(capture_from=(generation_changed_at or window_start) + config.settle_s)
        signals[signal], step = step_signal(
            signal_state, histogram, window.load_rps, window_start, config,
            compare=lambda r, c: compare_histograms(r, c, config),
            combine=merge_histograms, size=lambda h: h.total,
            needs_comparable_load=kind == "service_time",
        )
        ref = step.reference
        ref_mean = ref.mean() if ref is not None else math.nan
        histogram = step.current if step.current is not None else histogram
        cur_mean = histogram.mean()
        decisive_over = any(step.tests[t].over for t in config.decisive_tests if t in step.tests)
        slower = ref is not None and cur_mean > ref_mean
        regression = (
            kind == "service_time" and slower and since_change <= _regression_horizon(config)
            and ((step.compared_with_previous_generation and decisive_over) or step.declared)
        )
        reports[signal] = DriftReport(
            signal, kind, step.status, step.tests, step.drifted_by_test, step.declared_by_test,
            step.drifted, step.declared, regression,
            ref.total if ref is not None else 0.0, histogram.total, ref_mean, cur_mean,
            _report_message(signal, step.status, step.tests, step.drifted or (step.status == "baseline_captured" and decisive_over),
                            ref_mean, cur_mean, ref.total if ref is not None else 0.0, histogram.total, config),
        )

    workload = any(r.drifted for r in reports.values() if r.kind == "workload")
    service = not workload and any(r.drifted for r in reports.values() if r.kind == "service_time")
    regression = not workload and any(r.performance_regression for r in reports.values())
    refit = any(r.declared for r in reports.values() if r.kind == "workload")
    if regression:
        reason = "PerformanceRegression"
    elif workload:
        reason = "WorkloadDrift"
    elif service:
        reason = "ServiceTimeDrift"
    else:
        reason = "NoDrift"
    drifted_messages = [r.message for r in reports.values() if r.drifted or r.performance_regression]
    message = "; ".join(drifted_messages) if drifted_messages else "no drift in " + ", ".join(reports) if reports else "no signals"
    new_state = DetectorState(window.generation, generation_changed_at, signals, fleet)
    return new_state, DriftAssessment(window.end_time, reports, workload, service, regression, refit, reason, message)
