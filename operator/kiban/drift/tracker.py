"""The operator's side of drift detection, without I/O: what the autoscale loop feeds the
detector and what it writes back.

    Prometheus answers (kiban.autoscale.collector.DriftSeries: per signal, increase() of the
    `_bucket` series summed by le, and of `_sum`)
      → `window_observation` (BinnedHistogram per signal, window load)
      → `drift_step` (kiban.drift.detector.observe_window, once per drift window)
      → `drift_condition`, `drift_status`, `drift_events`, `drift_metric_values`
      → and, on workload drift, a `Refit`: the capacity model takes the new window's token
        means at once (`observation_with_refit`) and forgets any token history of the old
        mix (`reset_policy_state`), instead of waiting for its token window to roll over.

Spec changes: `engine_revision` hashes the spec without `scaling` and `drift`, so a scale
(which bumps metadata.generation through the scale subresource) is not a new engine; the
detector's `generation` is a counter of engine revisions, so a service-time drift soon after
a real change is reported as a performance regression.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from kiban.autoscale.policy import Observation, PolicyState
from kiban.clock import rfc3339
from kiban.drift.detector import (
    DetectorState,
    DriftAssessment,
    DriftConfig,
    WindowObservation,
    observe_window,
)
from kiban.drift.histograms import BinnedHistogram, parse_cumulative

DRIFT_DETECTED = "DriftDetected"
NOT_EVALUATED = "AwaitingReference"  # reason while no window has been compared yet
NO_DRIFT = "NoDrift"
REFIT_EVENT = "CapacityModelRefitted"
CLEARED_EVENT = "DriftCleared"
WORKLOAD_SIGNALS = ("prompt_tokens", "generation_tokens")


# -- configuration ------------------------------------------------------------------------------


def drift_config_from(spec: Any, *, window_s: float | None = None, min_samples: int | None = None,
                      psi_threshold: float | None = None) -> DriftConfig:
    """DriftConfig from spec.drift (api.v1alpha1.DriftSpec), operator overrides winning.

    windowSeconds → window_s; referenceWindowSeconds → rolling_windows (the rolling reference
    covers that much time); jsDivergenceThreshold → js_threshold; pValueThreshold → the KS and
    mean-shift alphas (reported, not decisive). Everything else keeps the measured defaults.
    """
    window = float(window_s if window_s is not None else spec.window_seconds)
    rolling = max(1, round(float(spec.reference_window_seconds) / window))
    settings: dict[str, Any] = dict(
        window_s=window, rolling_windows=rolling, js_threshold=float(spec.js_divergence_threshold),
        ks_alpha=float(spec.p_value_threshold), mean_shift_alpha=float(spec.p_value_threshold),
    )
    if min_samples is not None:
        settings["min_samples"] = int(min_samples)
    if psi_threshold is not None:
        settings["psi_threshold"] = float(psi_threshold)
    return DriftConfig(**settings)


def engine_revision(spec: Mapping[str, Any]) -> str:
    """A hash of what decides the engine's speed: the spec without `scaling` and `drift`."""
    engine = {k: v for k, v in spec.items() if k not in ("scaling", "drift")}
    return hashlib.sha256(json.dumps(engine, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- Prometheus answers → a window ----------------------------------------------------------------


def histogram_from_increase(buckets: Sequence[tuple[str, float]], total_sum: float | None) -> BinnedHistogram:
    """One window's BinnedHistogram from `sum by (le) (increase(..._bucket[w]))`.

    increase() extrapolates each series to the window's edges, so counts are fractional and
    neighbouring `le` values can differ by float noise; cumulative counts are made monotone
    (running maximum) before they are split into bins.
    """
    bounds, cumulative = parse_cumulative(_monotone(buckets))
    per_bin = np.diff(np.concatenate(([0.0], cumulative)))
    return BinnedHistogram(bounds, tuple(float(max(0.0, c)) for c in per_bin),
                           total_sum if total_sum is not None and math.isfinite(total_sum) else None)


def _monotone(buckets: Sequence[tuple[str, float]]) -> list[tuple[float, float]]:
    pairs = sorted((float(le) if le not in ("+Inf", "Inf", "inf", "+inf") else math.inf, max(0.0, float(c)))
                   for le, c in buckets)
    out, running = [], 0.0
    for le, count in pairs:
        running = max(running, count)
        out.append((le, running))
    return out


def window_observation(
    buckets: Mapping[str, Sequence[tuple[str, float]]],
    sums: Mapping[str, float | None],
    *,
    end_time: float,
    window_s: float,
    generation: int,
    replicas: int | None = None,
    batch_per_engine: float | None = None,
    replicas_seen: tuple[int, int] | None = None,
) -> WindowObservation | None:
    """The detector's input from one window's answers; None when no signal has a series.

    Load (service times are compared only at a comparable one) is what inter-token latency
    follows, per engine: requests completed per second and prompt tokens per second per ready
    replica (prefill chunks share the decode steps), and, where Prometheus has it, the running
    batch `batch_per_engine` (the window's mean of vllm:num_requests_running per engine). All
    must be comparable: a ramp raises ITL through bigger batches and more prefill, and after a
    scale-up the same model-wide load is half of each, faster tokens but not a faster engine.
    `replicas_seen`: the fewest and most ready replicas during the window (the fleet-size rule).
    """
    histograms = {signal: histogram_from_increase(pairs, sums.get(signal))
                  for signal, pairs in buckets.items() if pairs}
    if not histograms:
        return None
    finished = histograms.get("prompt_tokens")
    load: float | tuple[float, ...] | None = None
    if finished is not None and window_s > 0:
        engines = max(1, replicas or 1)
        prompt_tokens = finished.total_sum if finished.total_sum is not None else finished.mean() * finished.total
        parts = [finished.total / window_s / engines]
        if math.isfinite(prompt_tokens):
            parts.append(prompt_tokens / window_s / engines)
        if batch_per_engine is not None and math.isfinite(batch_per_engine) and batch_per_engine >= 0:
            parts.append(batch_per_engine)
        load = parts[0] if len(parts) == 1 else tuple(parts)
    return WindowObservation(end_time=end_time, generation=generation, histograms=histograms, load_rps=load,
                             replicas=replicas_seen)


def token_means(window: WindowObservation, min_samples: int,
                assessment: DriftAssessment | None = None) -> tuple[float, float] | None:
    """(mean prompt, mean output tokens) of a window holding at least min_samples requests.

    With the window's assessment, the compared window's (a sparse window is merged with the
    next ones, so the declaring window alone may hold too few requests).
    """
    reports = assessment.reports if assessment is not None else {}
    compared = [reports.get(s) for s in ("prompt_tokens", "generation_tokens")]
    if all(r is not None and r.status == "evaluated" for r in compared):
        counts, means = [r.current_count for r in compared], (compared[0].current_mean, compared[1].current_mean)
    else:
        prompt, output = window.histograms.get("prompt_tokens"), window.histograms.get("generation_tokens")
        if prompt is None or output is None:
            return None
        counts, means = [prompt.total, output.total], (prompt.mean(), output.mean())
    if min(counts) < min_samples:
        return None
    return means if all(math.isfinite(m) and m >= 0 for m in means) else None


# -- re-fitting the capacity model ------------------------------------------------------------------


@dataclass(frozen=True)
class Refit:
    """The capacity model's token means switched to the drifted window's at `time_s`.

    `until_s`: the token means of the drift windows replace the collector's until the
    collector's own token window holds only requests from after the shift.
    """

    time_s: float
    prompt_before: float | None
    output_before: float | None
    prompt_after: float
    output_after: float
    until_s: float

    def active(self, now_s: float) -> bool:
        return now_s < self.until_s

    def describe(self) -> str:
        return (f"re-fitted the capacity model at {rfc3339(self.time_s)}: prompt "
                f"{_tokens(self.prompt_before)} → {self.prompt_after:.0f} tokens, output "
                f"{_tokens(self.output_before)} → {self.output_after:.0f} tokens")


def _tokens(value: float | None) -> str:
    return f"{value:.0f}" if value is not None and math.isfinite(value) else "n/a"


def refit_for(
    assessment: DriftAssessment, window: WindowObservation, before: tuple[float | None, float | None],
    *, token_window_s: float, drift_window_s: float, min_samples: int,
) -> Refit | None:
    """A Refit when workload drift was declared in this window and the window has the means.

    The override lasts `token_window_s` past the window's end, and only when that window is
    longer than the drift window (otherwise the collector's means are already the fresher).
    """
    if not assessment.refit_capacity_model:
        return None
    means = token_means(window, min_samples, assessment)
    if means is None:
        return None
    until = window.end_time + token_window_s if token_window_s > drift_window_s else window.end_time
    return Refit(window.end_time, before[0], before[1], means[0], means[1], until)


def follow_refit(refit: Refit | None, window: WindowObservation, min_samples: int,
                 assessment: DriftAssessment | None = None) -> Refit | None:
    """While an override is active, each new drift window's means replace the previous ones."""
    if refit is None or not refit.active(window.end_time):
        return refit
    means = token_means(window, min_samples, assessment)
    return replace(refit, prompt_after=means[0], output_after=means[1]) if means else refit


def observation_with_refit(obs: Observation, refit: Refit | None) -> Observation:
    """The policy's Observation with the re-fitted token means while the override is active."""
    if refit is None or not refit.active(obs.time_s) or not obs.metrics_available:
        return obs
    return replace(obs, mean_prompt_tokens=refit.prompt_after, mean_output_tokens=refit.output_after)


# PolicyState history made for the old mix (token_samples: a policy that averages token means itself)
RESET_ON_REFIT = ("token_samples",)


def reset_policy_state(state: PolicyState, *, forget_recommendations: bool = False) -> PolicyState:
    """Forget the token history of the old mix, so the re-fitted means count at once.

    The scale-down recommendations and the rate trend are kept by default: the arrival rate
    does not depend on the mix, and on the real bursty code trace forgetting the stabilisation
    window let the fleet shrink between bursts (kiban_dev/benchmark/drift_refit.py: SLO attainment after the
    switch 80.3 % with it, 84.6 % without re-fitting; docs/drift.md).
    """
    present = {f.name for f in fields(state)}
    names = RESET_ON_REFIT + (("recommendations", "rate_samples") if forget_recommendations else ())
    return replace(state, **{name: () for name in names if name in present})


# -- one drift window -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftMemory:
    """What the loop keeps per model between drift windows (a value; the loop stores it)."""

    detector: DetectorState = field(default_factory=DetectorState)
    revision: str | None = None
    generation: int = 0  # counts engine revisions
    next_window_s: float = -math.inf  # evaluate at the first pass at or after this time
    last_window_end_s: float | None = None
    assessment: DriftAssessment | None = None
    refit: Refit | None = None  # the latest re-fit (kept for status after its override ends)
    replicas_seen: tuple[int, int] | None = None  # (fewest, most) ready replicas since the last window


def note_replicas(memory: DriftMemory, ready: int) -> DriftMemory:
    """Remember the fewest and most ready replicas a pass saw since the last drift window."""
    low, high = memory.replicas_seen or (ready, ready)
    return replace(memory, replicas_seen=(min(low, ready), max(high, ready)))


def note_revision(memory: DriftMemory, revision: str) -> DriftMemory:
    """Count a new engine revision (the first one seen is not a change)."""
    if memory.revision == revision:
        return memory
    generation = memory.generation + 1 if memory.revision is not None else memory.generation
    detector = memory.detector if memory.revision is not None else DetectorState(generation=generation)
    return replace(memory, revision=revision, generation=generation, detector=detector)


def window_range_s(memory: DriftMemory, now_s: float, config: DriftConfig) -> float:
    """The range to query: since the last window's end (no gap after a late tick), within 1-2 windows."""
    if memory.last_window_end_s is None:
        return config.window_s
    return min(2 * config.window_s, max(config.window_s, now_s - memory.last_window_end_s))


@dataclass(frozen=True)
class DriftOutcome:
    """What one drift window changed."""

    assessment: DriftAssessment | None
    new_refit: Refit | None  # set only in the window that declared workload drift


def drift_step(
    memory: DriftMemory,
    buckets: Mapping[str, Sequence[tuple[str, float]]],
    sums: Mapping[str, float | None],
    *,
    now_s: float,
    range_s: float,
    config: DriftConfig,
    before: tuple[float | None, float | None],
    token_window_s: float,
    replicas: int | None = None,
    batch_per_engine: float | None = None,
) -> tuple[DriftMemory, DriftOutcome]:
    """Feed one window to the detector and decide on a re-fit; state in, state out.
    `replicas` (ready now) and `batch_per_engine` give the window's load per engine; the fleet
    sizes the passes noted since the last window (note_replicas) go with it."""
    if replicas is not None:
        memory = note_replicas(memory, replicas)
    seen = memory.replicas_seen
    memory = replace(memory, next_window_s=now_s + config.window_s, last_window_end_s=now_s,
                     replicas_seen=(replicas, replicas) if replicas is not None else None)
    window = window_observation(buckets, sums, end_time=now_s, window_s=range_s, generation=memory.generation,
                                replicas=replicas, batch_per_engine=batch_per_engine, replicas_seen=seen)
    if window is None:
        return memory, DriftOutcome(None, None)
    detector, assessment = observe_window(memory.detector, window, config)
    refit = refit_for(assessment, window, before, token_window_s=token_window_s,
                      drift_window_s=config.window_s, min_samples=config.min_samples)
    latest = refit or follow_refit(memory.refit, window, config.min_samples, assessment)
    return replace(memory, detector=detector, assessment=assessment, refit=latest), DriftOutcome(assessment, refit)


# -- status, condition, Events, metrics -------------------------------------------------------------



def _compared(assessment: DriftAssessment) -> bool:
    return any(r.tests for r in assessment.reports.values())


def _detected(assessment: DriftAssessment) -> bool:
    return assessment.workload_drift or assessment.service_time_drift or assessment.performance_regression


def _with_refit(message: str, refit: Refit | None, now_s: float) -> str:
    """The re-fit is part of the condition's story in its own window and while it is in force."""
    if refit is None or not (refit.time_s == now_s or refit.active(now_s)):
        return message
    return f"{message}; {refit.describe()}"


def drift_condition(assessment: DriftAssessment, generation: int, refit: Refit | None = None) -> dict[str, Any]:
    """DriftDetected (without lastTransitionTime): True naming the signal and its numbers,
    False when every compared signal is stable, Unknown until a window has been compared."""
    if _detected(assessment):
        return {"type": DRIFT_DETECTED, "status": "True", "reason": assessment.reason,
                "message": _with_refit(assessment.message, refit, assessment.end_time), "observedGeneration": generation}
    if not _compared(assessment):
        message = "; ".join(r.message for r in assessment.reports.values()) or "no drift signal in Prometheus"
        return {"type": DRIFT_DETECTED, "status": "Unknown", "reason": NOT_EVALUATED, "message": message,
                "observedGeneration": generation}
    return {"type": DRIFT_DETECTED, "status": "False", "reason": NO_DRIFT, "message": assessment.message,
            "observedGeneration": generation}


def drift_status(assessment: DriftAssessment, refit: Refit | None = None) -> dict[str, Any]:
    """status.drift as the CRD defines it (DriftStatus): the latest window's verdict, the largest
    JS divergence and smallest KS p-value over the compared signals, and the latest re-fit."""
    js = [r.tests["js"].score for r in assessment.reports.values() if "js" in r.tests]
    p_values = [r.tests["ks"].p_value for r in assessment.reports.values()
                if "ks" in r.tests and r.tests["ks"].p_value is not None]
    message = assessment.message if _compared(assessment) else drift_condition(assessment, 0)["message"]
    if refit is not None:
        message = f"{message}; {refit.describe()}"
    return {
        "detected": _detected(assessment),
        "jsDivergence": round(max(js), 6) if js else None,
        "pValue": float(f"{min(p_values):.6g}") if p_values else None,
        "message": message,
        "lastEvaluationTime": rfc3339(assessment.end_time),
    }


def drift_events(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any], new_refit: Refit | None = None
) -> list[tuple[str, str, str]]:
    """(type, reason, message) Events: drift declared (or its kind changed), drift cleared, re-fit."""
    events: list[tuple[str, str, str]] = []
    was = previous.get("status") if previous else None
    if current["status"] == "True" and (was != "True" or previous.get("reason") != current["reason"]):
        events.append(("Warning", current["reason"], current["message"]))
    elif current["status"] == "False" and was == "True":
        events.append(("Normal", CLEARED_EVENT, current["message"]))
    if new_refit is not None:
        text = new_refit.describe()
        events.append(("Normal", REFIT_EVENT, text[0].upper() + text[1:]))
    return events


def drift_metric_values(assessment: DriftAssessment) -> list[tuple[str, float, dict[str, str]]]:
    """(gauge attribute, value, extra labels) for kiban_drift_score and kiban_drift_detected."""
    values: list[tuple[str, float, dict[str, str]]] = []
    for signal, report in assessment.reports.items():
        for test, outcome in report.tests.items():
            values.append(("drift_score", float(outcome.score), {"signal": signal, "test": test}))
        values.append(("drift_detected", 1.0 if report.drifted or report.performance_regression else 0.0,
                       {"signal": signal}))
    return values
