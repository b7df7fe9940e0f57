"""What the autoscaler learns about one model's engine while it runs (pure, no clock, no I/O).

The engine profile a FoundationModel ships with is a datasheet estimate; the real GPU, driver
and model build differ. Every pass feeds this module what vLLM exported per engine over the
window (kiban.capacity.fitting.EngineWindow) and the model's own pods (creation and first
Ready time, per revision); it returns the profile the capacity model should use (the prior,
overridden by evidence as it accumulates) and the look-ahead a scale-up needs (creation to
Ready as the model's pods showed it). The memory is an immutable value the caller keeps.

A new engine revision (image, flags) starts the step-time evidence again: the old engine's
numbers say nothing about the new one. Drift of the service time does the same
(`forget_engine`); workload drift (the drift tracker's Refit) discounts it (`discount_engine`):
the engine is the same, but the evidence was read through the old mix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.fitting import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    FIT_FIELDS,
    FORGET_S,
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
from kiban.clock import epoch_s

CAPACITY_EVENT_SHARE = 0.20  # an Event when the fit moves capacity per replica by more than this
APPLY_STEP = 0.075  # a fitted parameter replaces the one in use once it moved by more than this share


@dataclass(frozen=True)
class LearningMemory:
    """Evidence about the engine, the pods' start times, and what the last Event announced."""

    evidence: EngineEvidence = field(default_factory=EngineEvidence)
    startup: StartupMemory = field(default_factory=StartupMemory)
    revision: str | None = None
    announced_ratio: float | None = None  # fitted / prior capacity when an Event last announced it (None: 1)
    applied: EngineProfile | None = None  # the profile the capacity model uses (moves in steps, see learn)


@dataclass(frozen=True)
class Learned:
    """This pass's learned engine: the fit (prior, value, sd) and the cold start."""

    fit: EngineFit
    startup: StartupEstimate
    profile: EngineProfile  # what the capacity model uses: the fit, snapped and moved in steps


def learn(memory: LearningMemory, prior: EngineProfile, windows: Sequence[EngineWindow], pods: Sequence[PodStart],
          now_s: float, revision: str | None = None, *, prompt_mix: Sequence[tuple[float, float]] | None = None,
          weight: float = 1.0, max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
          pod_revision: str | None = None) -> tuple[LearningMemory, Learned]:
    """One pass: add the windows' evidence and the pods' starts, fit the engine around the prior.

    `prompt_mix`: the model's prompt-length law (the collector's, from vllm:request_prompt_tokens'
    buckets), for how many steps a prefill takes; `weight`: the share of each window not seen
    before (a rate window read every interval overlaps the last one); `max_num_batched_tokens`:
    the engine's token budget per step. `revision` names the engine (a new one resets the
    step-time evidence); `pod_revision` the pods' template whose cold start is estimated (None:
    the newest pods'; falls back to `revision`)."""
    evidence, announced = memory.evidence, memory.announced_ratio
    if revision is not None and memory.revision is not None and revision != memory.revision:
        evidence, announced = EngineEvidence(), None  # a new engine: its old step times are no evidence
    evidence = add_evidence(evidence, windows, now_s, weight=weight, max_num_batched_tokens=max_num_batched_tokens,
                            max_num_seqs=prior.max_num_seqs, prompt_mix=prompt_mix)
    startup = remember_starts(memory.startup, pods)
    estimate = estimate_startup(startup, pods, prior.startup_s, now_s, pod_revision or newest_revision(pods) or revision)
    fit = fit_engine(prior, evidence)
    applied = applied_profile(memory.applied, fit.profile)
    new = replace(memory, evidence=evidence, startup=startup, revision=revision or memory.revision, applied=applied,
                  announced_ratio=announced)
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


def discount_engine(memory: LearningMemory, forget_s: float = FORGET_S) -> LearningMemory:
    """Age the step-time evidence by one forgetting time constant (weight x 1/e) at once: the
    workload drifted, the engine did not, but what was read under the old mix should not
    outvote the new one for long."""
    evidence = memory.evidence
    if evidence.time_s is None:
        return memory
    return replace(memory, evidence=replace(evidence, time_s=evidence.time_s - forget_s))


def newest_revision(pods: Sequence[PodStart]) -> str | None:
    """The revision of the most recently created pod (the one a scale-up would start)."""
    return max(pods, key=lambda p: p.created_s).revision if pods else None


def pod_starts(pods: Sequence[Mapping[str, Any]]) -> list[PodStart]:
    """The model's pods, as the operator's pod index projects them (metadata.creationTimestamp,
    its revision label, the Ready condition), as PodStarts: Ready time = the Ready condition's
    lastTransitionTime while it is True. A pod without a creation time is left out."""
    out = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        created = epoch_s(metadata.get("creationTimestamp"))
        if created is None:
            continue
        labels = metadata.get("labels") or {}
        revision = next((str(v) for k, v in sorted(labels.items()) if k.endswith("-hash") and v), "")
        ready = None
        for cond in (pod.get("status") or {}).get("conditions") or ():
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                ready = epoch_s(cond.get("lastTransitionTime"))
        out.append(PodStart(revision, created, ready if ready is not None and ready >= created else None))
    return out


def capacity_moved(memory: LearningMemory, prior_capacity_rps: float | None, fitted_capacity_rps: float | None,
                   fit: EngineFit | None = None) -> tuple[LearningMemory, str | None]:
    """An Event message when the fit has moved capacity per replica by more than 20 % since it
    was last announced (at first: since the datasheet prior); None otherwise.

    Both capacities are at the same workload (this pass's token means), so only the engine fit
    moves their ratio, never the traffic. The memory records the ratio announced."""
    if not (prior_capacity_rps and fitted_capacity_rps and prior_capacity_rps > 0 and fitted_capacity_rps > 0):
        return memory, None
    ratio = fitted_capacity_rps / prior_capacity_rps
    reference = memory.announced_ratio if memory.announced_ratio is not None else 1.0
    change = ratio / reference - 1.0
    if abs(change) <= CAPACITY_EVENT_SHARE:
        return memory, None
    message = (f"the engine fit moved capacity per replica {change:+.0%}: {fitted_capacity_rps:.3g} req/s with the "
               f"fitted engine, {prior_capacity_rps:.3g} with the datasheet prior, at the current workload")
    if fit is not None:
        message += "; " + ", ".join(f"{name.split('_')[0]} {getattr(fit.prior, name):.3g} → "
                                    f"{getattr(fit.profile, name):.3g} ± {fit.sd[name]:.2g} ms"
                                    + ("/token" if name == "delta_ms" else "/sequence" if name == "beta_ms" else "")
                                    for name in FIT_FIELDS)
    return replace(memory, announced_ratio=ratio), message


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
