"""What the autoscaler learns about one model's engine while it runs (pure, no clock, no I/O).

The engine profile a FoundationModel ships with is a datasheet estimate; the real GPU, driver
and model build differ. Every pass feeds this module what vLLM exported per engine over the
window (kiban.capacity.fitting.EngineWindow) and the model's own pods (creation and first
Ready time, per revision); it returns the profile the capacity model should use (the prior,
overridden by evidence as it accumulates) and the look-ahead a scale-up needs (creation to
Ready as the model's pods showed it). The memory is an immutable value the caller keeps.

A new engine revision (image, flags) starts the step-time evidence again: the old engine's
numbers say nothing about the new one. Drift of the service time does the same (`forget`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.fitting import (
    FIT_FIELDS,
    EngineEvidence,
    EngineFit,
    EngineWindow,
    PodStart,
    StartupEstimate,
    StartupMemory,
    add_evidence,
    estimate_startup,
    fit_engine,
    remember_starts,
    snapped_profile,
)

CAPACITY_EVENT_SHARE = 0.20  # an Event when the fit moves capacity per replica by more than this
APPLY_STEP = 0.075  # a fitted parameter replaces the one in use once it moved by more than this share


@dataclass(frozen=True)
class LearningMemory:
    """Evidence about the engine, the pods' start times, and what the last Event announced."""

    evidence: EngineEvidence = field(default_factory=EngineEvidence)
    startup: StartupMemory = field(default_factory=StartupMemory)
    revision: str | None = None
    announced_capacity_rps: float | None = None  # capacity per replica when the fit last moved it by >20 %
    applied: EngineProfile | None = None  # the profile the capacity model uses (moves in steps, see learn)


@dataclass(frozen=True)
class Learned:
    """This pass's learned engine: the fit (prior, value, sd) and the cold start."""

    fit: EngineFit
    startup: StartupEstimate
    profile: EngineProfile  # what the capacity model uses: the fit, snapped and moved in steps


def learn(memory: LearningMemory, prior: EngineProfile, windows: Sequence[EngineWindow], pods: Sequence[PodStart],
          now_s: float, revision: str | None = None) -> tuple[LearningMemory, Learned]:
    """One pass: add the windows' evidence and the pods' starts, fit the engine around the prior."""
    evidence = memory.evidence
    if revision is not None and memory.revision is not None and revision != memory.revision:
        evidence = EngineEvidence()  # a new engine: its old step times are no evidence
    evidence = add_evidence(evidence, windows, now_s)
    startup = remember_starts(memory.startup, pods)
    estimate = estimate_startup(startup, pods, prior.startup_s, now_s, revision)
    fit = fit_engine(prior, evidence)
    applied = applied_profile(memory.applied, fit.profile)
    new = replace(memory, evidence=evidence, startup=startup, revision=revision or memory.revision, applied=applied)
    return new, Learned(fit=fit, startup=estimate, profile=applied)


def applied_profile(applied: EngineProfile | None, fitted: EngineProfile, step: float = APPLY_STEP) -> EngineProfile:
    """The profile to size with: the fit snapped to a 5 % grid, taken over only once some step-time
    parameter has moved more than `step` from the one in use. Each new profile costs the capacity
    model fresh solves; a fit that wanders by a few per cent changes no decision worth them."""
    candidate = snapped_profile(fitted)
    if applied is None:
        return candidate
    for name in FIT_FIELDS:
        old, new = getattr(applied, name), getattr(candidate, name)
        if old > 0 and abs(new / old - 1.0) > step:
            return candidate
    return applied


def forget_engine(memory: LearningMemory) -> LearningMemory:
    """Drop the step-time evidence (the service time drifted); the pods' start times stay."""
    return replace(memory, evidence=EngineEvidence())


def capacity_moved(memory: LearningMemory, prior_capacity_rps: float | None, fitted_capacity_rps: float | None
                   ) -> tuple[LearningMemory, str | None]:
    """An Event message when the fitted capacity per replica is more than 20 % away from the last
    one announced (from the prior's at first); None otherwise. The memory records the announcement."""
    if fitted_capacity_rps is None or not fitted_capacity_rps > 0:
        return memory, None
    reference = memory.announced_capacity_rps if memory.announced_capacity_rps is not None else prior_capacity_rps
    if reference is None or not reference > 0:
        return replace(memory, announced_capacity_rps=fitted_capacity_rps), None
    change = fitted_capacity_rps / reference - 1.0
    if abs(change) <= CAPACITY_EVENT_SHARE:
        if memory.announced_capacity_rps is None:
            memory = replace(memory, announced_capacity_rps=reference)
        return memory, None
    message = (f"the engine fit moved capacity per replica from {reference:.3g} to {fitted_capacity_rps:.3g} req/s "
               f"({change:+.0%})")
    return replace(memory, announced_capacity_rps=fitted_capacity_rps), message


def fit_summary(learned: Learned) -> dict[str, float | int | None]:
    """Prior, fitted value and sd per parameter, and the cold start, for status and reports."""
    fit = learned.fit
    out: dict[str, float | int | None] = {}
    for name, sd in fit.sd.items():
        out[f"{name}_prior"] = getattr(fit.prior, name)
        out[f"{name}_fitted"] = round(getattr(fit.profile, name), 6)
        out[f"{name}_sd"] = round(sd, 6) if math.isfinite(sd) else None
    out["startup_prior_s"] = learned.startup.prior_s
    out["startup_learned_s"] = round(learned.startup.value_s, 3)
    out["startup_samples"] = learned.startup.samples
    out["observations"] = round(fit.observations, 1)
    return out
