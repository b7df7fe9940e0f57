"""Measure the drift detector on real traces played back to back (trace A, then trace B).

Each window's requests are binned into vLLM's buckets the way Prometheus holds them: the
cumulative `_bucket` counters are sampled at every window boundary (a scrape) and the window
is the delta of two scrapes, through the same `window_counts` the operator uses. Requests are
counted at arrival (the traces hold no completion times). Beside the binned tests, a KS test
on the raw samples (scipy's ks_2samp, as TrustyAI's KSTest would) runs through the same
reference policy, windows and alpha.

Measured per test and signal: detection delay after the switch, and false alarms on the
stationary parts (before the switch; after the detection episode in B has cleared) scaled to
24 h of monitored trace time.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from kiban.drift.detector import (
    TESTS,
    WORKLOAD_SIGNALS,
    DetectorState,
    DriftConfig,
    SignalState,
    TestOutcome,
    WindowObservation,
    observe_window,
    step_signal,
)
from kiban.drift.histograms import (
    BinnedHistogram,
    bin_samples,
    cumulative_buckets,
    token_count_buckets,
    window_counts,
)

SECONDS_PER_DAY = 86400.0
TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
RAW_KS = "raw_ks"
TRACE_SIGNAL_COLUMNS = {"prompt_tokens": "ContextTokens", "generation_tokens": "GeneratedTokens"}


@dataclass(frozen=True)
class Trace:
    """Arrival times (seconds from the trace's first request) and token counts per request."""

    name: str
    times_s: np.ndarray
    tokens: Mapping[str, np.ndarray]  # signal name -> per-request token counts

    @property
    def duration_s(self) -> float:
        return float(self.times_s[-1]) if self.times_s.size else 0.0


def load_azure_trace(path: str | Path) -> Trace:
    """Read an Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {TRACE_COLUMNS}")
        stamps, context, generated = [], [], []
        for line, row in enumerate(reader, start=2):
            try:
                stamps.append(row["TIMESTAMP"].strip().replace(" ", "T"))
                context.append(float(row["ContextTokens"]))
                generated.append(float(row["GeneratedTokens"]))
            except (ValueError, AttributeError) as exc:
                raise ValueError(f"{path}:{line}: bad ContextTokens/GeneratedTokens: {exc}") from exc
    if not stamps:
        raise ValueError(f"{path}: no requests")
    try:
        times = np.array(stamps, dtype="datetime64[ns]")
    except ValueError as exc:
        raise ValueError(f"{path}: bad TIMESTAMP: {exc}") from exc
    order = np.argsort(times, kind="stable")
    seconds = (times[order] - times[order][0]).astype("timedelta64[ns]").astype(np.int64) / 1e9
    return Trace(
        path.stem, seconds,
        {"prompt_tokens": np.asarray(context)[order], "generation_tokens": np.asarray(generated)[order]},
    )


def concatenate(first: Trace, second: Trace) -> tuple[Trace, float]:
    """B shifted to start where A ends; returns the joined trace and the switch time."""
    switch = first.duration_s
    times = np.concatenate((first.times_s, second.times_s + switch))
    tokens = {s: np.concatenate((first.tokens[s], second.tokens[s])) for s in first.tokens}
    return Trace(f"{first.name}+{second.name}", times, tokens), switch


def window_edges(duration_s: float, window_s: float, phase_s: float = 0.0) -> np.ndarray:
    """Scrape times: every window_s from -phase_s; only full windows inside the trace."""
    count = int(math.floor((duration_s + phase_s) / window_s))
    return -phase_s + window_s * np.arange(count + 1)


def scraped_windows(times_s: np.ndarray, values: np.ndarray, edges: np.ndarray,
                    upper_bounds: Sequence[float]) -> list[BinnedHistogram]:
    """Per-window histograms as two consecutive scrapes of cumulative buckets would give."""
    ends = np.searchsorted(times_s, edges, side="left")  # requests strictly before each scrape
    windows: list[BinnedHistogram] = []
    previous = None
    previous_sum = None
    for end in ends:
        scrape = bin_samples(values[:end], upper_bounds)
        cumulative = cumulative_buckets(scrape)
        if previous is not None:
            windows.append(window_counts(previous, cumulative, previous_sum, scrape.total_sum))
        previous, previous_sum = cumulative, scrape.total_sum
    return windows


def raw_windows(times_s: np.ndarray, values: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    ends = np.searchsorted(times_s, edges, side="left")
    return [values[a:b] for a, b in zip(ends[:-1], ends[1:])]


@dataclass(frozen=True)
class WindowVerdict:
    end_s: float
    evaluated: bool
    declared: bool
    drifted: bool


def raw_ks_verdicts(windows: Sequence[np.ndarray], edges: np.ndarray, config: DriftConfig) -> list[WindowVerdict]:
    """scipy's ks_2samp on raw samples, through the detector's own reference and streak logic."""
    from scipy.stats import ks_2samp  # dev dependency: only the evaluation compares against it

    def compare(reference: np.ndarray, current: np.ndarray) -> dict[str, TestOutcome]:
        result = ks_2samp(reference, current)
        return {"ks": TestOutcome(float(result.statistic), float(result.pvalue) < config.ks_alpha, float(result.pvalue))}

    ks_config = replace(config, decisive_tests=("ks",))
    state: SignalState[np.ndarray] = SignalState(capture_from=float(edges[0]) + config.settle_s)
    verdicts = []
    for window, start, end in zip(windows, edges[:-1], edges[1:]):
        state, step = step_signal(state, window, None, float(start), ks_config, compare,
                                  combine=lambda parts: np.concatenate(list(parts)), size=len)
        verdicts.append(WindowVerdict(float(end), step.status == "evaluated", step.declared, step.drifted))
    return verdicts


def detector_verdicts(histograms: Mapping[str, Sequence[BinnedHistogram]], edges: np.ndarray,
                      config: DriftConfig) -> dict[str, list[WindowVerdict]]:
    """Run the detector over every window; verdicts per signal plus 'any_workload'."""
    state = DetectorState()
    verdicts: dict[str, list[WindowVerdict]] = {s: [] for s in histograms}
    verdicts["any_workload"] = []
    was_any = False
    for index, end in enumerate(edges[1:]):
        window = WindowObservation(float(end), 1, {s: h[index] for s, h in histograms.items()})
        state, assessment = observe_window(state, window, config)
        for signal, report in assessment.reports.items():
            verdicts[signal].append(WindowVerdict(float(end), report.status == "evaluated", report.declared, report.drifted))
        workload = [assessment.reports[s] for s in WORKLOAD_SIGNALS if s in assessment.reports]
        any_now = any(r.drifted for r in workload)
        verdicts["any_workload"].append(
            WindowVerdict(float(end), any(r.status == "evaluated" for r in workload), any_now and not was_any, any_now)
        )
        was_any = any_now
    return verdicts


def score_verdicts(verdicts: Sequence[WindowVerdict], switch_s: float, window_s: float) -> dict[str, object]:
    """Detection delay after the switch and false alarms on the stationary parts."""
    detection = next((v for v in verdicts if v.declared and v.end_s > switch_s), None)
    settled_at = math.inf
    if detection is not None:
        after = [v for v in verdicts if v.end_s > detection.end_s and not v.drifted]
        settled_at = after[0].end_s if after else math.inf
    before = [v for v in verdicts if v.end_s <= switch_s]
    settled = [v for v in verdicts if v.end_s > settled_at]
    stationary = before + settled
    false_alarms = sum(v.declared for v in stationary)
    monitored_s = window_s * sum(v.evaluated for v in stationary)
    return {
        "detection_delay_s": None if detection is None else round(detection.end_s - switch_s, 3),
        "detected_at_s": None if detection is None else detection.end_s,
        "settled_at_s": None if math.isinf(settled_at) else settled_at,
        "false_alarms": int(false_alarms),
        "false_alarms_before_switch": int(sum(v.declared for v in before)),
        "false_alarms_after_settle": int(sum(v.declared for v in settled)),
        "false_alarms_per_day": round(false_alarms * SECONDS_PER_DAY / monitored_s, 3) if monitored_s else None,
        "monitored_stationary_s": monitored_s,
        "windows": len(verdicts),
        "windows_evaluated": int(sum(v.evaluated for v in verdicts)),
        "windows_stationary": len(stationary),
        "windows_stationary_evaluated": int(sum(v.evaluated for v in stationary)),
        # Onsets undercount an alarm that never clears: how much stationary time was in alarm.
        "windows_stationary_in_alarm": int(sum(v.drifted for v in stationary)),
    }


def evaluate_traces(first: Trace, second: Trace, config: DriftConfig, phase_s: float = 0.0,
                    max_model_len: int = 32768) -> dict[str, object]:
    """The full evaluation: one row per (detector, test, signal) with the scores above."""
    joined, switch = concatenate(first, second)
    edges = window_edges(joined.duration_s, config.window_s, phase_s)
    if len(edges) < 2:
        raise ValueError(f"traces shorter than one window of {config.window_s} s")
    bounds = token_count_buckets(max_model_len)
    histograms = {s: scraped_windows(joined.times_s, v, edges, bounds) for s, v in joined.tokens.items()}

    rows: list[dict[str, object]] = []

    def add_rows(test: str, decisive: str, verdicts: Mapping[str, Sequence[WindowVerdict]]) -> None:
        for signal, items in verdicts.items():
            rows.append({"test": test, "decisive_tests": decisive, "signal": signal,
                         **score_verdicts(items, switch, config.window_s)})

    add_rows("default", "+".join(config.decisive_tests), detector_verdicts(histograms, edges, config))
    for test in TESTS:
        add_rows(test, test, detector_verdicts(histograms, edges, replace(config, decisive_tests=(test,))))
    add_rows(RAW_KS, RAW_KS, {
        s: raw_ks_verdicts(raw_windows(joined.times_s, v, edges), edges, config) for s, v in joined.tokens.items()
    })
    return {
        "traces": {"a": first.name, "b": second.name, "a_requests": int(first.times_s.size),
                   "b_requests": int(second.times_s.size), "a_duration_s": first.duration_s,
                   "b_duration_s": second.duration_s},
        "switch_s": switch,
        "phase_s": phase_s,
        "window_s": config.window_s,
        "max_model_len": max_model_len,
        "config": asdict(config),
        "targets": {"max_detection_delay_s": 300.0, "max_false_alarms_per_day": 1.0},
        "results": rows,
    }


def format_table(result: Mapping[str, object]) -> str:
    """A fixed-width table of the evaluation rows, for stdout and the docs."""
    header = ("test", "signal", "delay_s", "false_alarms", "per_day", "stationary_windows", "evaluated", "in_alarm")
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for row in result["results"]:  # type: ignore[union-attr]
        delay = "not detected" if row["detection_delay_s"] is None else f"{row['detection_delay_s']:.0f}"
        per_day = "n/a" if row["false_alarms_per_day"] is None else f"{row['false_alarms_per_day']:.1f}"
        lines.append(" | ".join((
            f"{row['test']}({row['decisive_tests']})" if row["test"] == "default" else str(row["test"]),
            str(row["signal"]), delay, str(row["false_alarms"]), per_day,
            str(row["windows_stationary"]), str(row["windows_stationary_evaluated"]),
            str(row["windows_stationary_in_alarm"]),
        )))
    return "\n".join(lines)


def phase_from_seed(seed: int | None, window_s: float) -> float:
    """Where the switch falls inside a window is luck; a seed draws the window grid's phase."""
    if seed is None:
        return 0.0
    return float(np.random.default_rng(seed).uniform(0.0, window_s))

