"""The autoscaler's capacity maths for a whole pass: what runs in the capacity worker process.

kiban.autoscale.model_pass.Decider sends a pass's DecideJobs to a spawned worker process, which
imports this module (the function and the jobs' classes are pickled by reference) and nothing
else of the operator: only the policy and the capacity models, so the worker does not load the
Kubernetes client, kopf, pydantic or prometheus_client (about 40 MB of a process's RSS).
model_pass re-exports every name here. A test keeps the imports light.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kiban.autoscale.policy import (Decision, Observation, PolicyState, ScalingConfig, capacity_per_replica_rps, decide,
                                    round_tokens_up)
from kiban.capacity.engine_profile import EngineProfile
from kiban.reconcile.logfmt import kv

log = logging.getLogger("kiban.autoscale")


def decide_strictest(
    observation: Any, configs: Sequence[ScalingConfig], state: PolicyState, profile: EngineProfile,
    ttft_slo_s: Mapping[float, float | None] | None = None,
) -> tuple[Decision, PolicyState]:
    """decide() under each SLO variant; the one asking for most replicas wins (all targets hold).

    `ttft_slo_s` (Collected.ttft_slo_s): each variant sees the observed TTFT at its own percentile.
    """
    best: tuple[Decision, PolicyState] | None = None
    for config in configs:
        seen = observation
        if ttft_slo_s and config.slo.ttft_ms is not None:
            seen = replace(observation, observed_ttft_slo_percentile_s=ttft_slo_s.get(config.slo.ttft_percentile))
        candidate = decide(seen, config, state, profile)
        if best is None or candidate[0].replicas > best[0].replicas:
            best = candidate
    assert best is not None, "configs must not be empty"
    return best


def fit_capacities(prior: EngineProfile, fitted: EngineProfile, observation: Any,
                   configs: Sequence[ScalingConfig]) -> tuple[float | None, float | None]:
    """Capacity per replica with the prior and with the fitted engine at this pass's token means
    (on the capacity grid, no prompt mix, so both are cached and only the engine differs), for
    the first SLO with a TTFT target; (None, None) without traffic or token means."""
    from kiban.autoscale.policy import sizing_utilization

    obs = observation
    if not obs.metrics_available or not (obs.arrival_rate_rps or 0) > 0:
        return None, None
    if obs.mean_prompt_tokens is None or obs.mean_output_tokens is None or not configs:
        return None, None
    prompt = round_tokens_up(max(1.0, float(obs.mean_prompt_tokens)))
    output = max(1.0, round_tokens_up(float(obs.mean_output_tokens)))
    config = next((c for c in configs if c.slo.ttft_ms is not None), configs[0])
    out = []
    for profile in (prior, fitted):
        try:
            fits = prompt + output <= profile.kv_cache_tokens
            out.append(capacity_per_replica_rps(profile, prompt, output, config.slo, sizing_utilization(config))
                       if fits else None)
        except ValueError:
            out.append(None)
    return out[0], out[1]


@dataclass(frozen=True)
class DecideJob:
    """One model's decide_strictest inputs (picklable: it crosses to a worker process)."""

    observation: Observation
    configs: tuple[ScalingConfig, ...]
    state: PolicyState
    profile: EngineProfile  # the engine sized with (the learned one, kiban.autoscale.learning)
    ttft_slo_s: Mapping[float, float | None]
    prior: EngineProfile | None = None  # the datasheet profile: fit_capacities compares the two


DEFERRED = "deferred"  # decide_all's answer for a model left for the next pass (the solve budget ran out)


def decide_all(jobs: Sequence[DecideJob], budget_s: float | None = None) -> list[tuple[Decision, PolicyState] | str]:
    """decide_strictest for every job; a job that raises gives its error text (one bad model
    never costs the others their decision).

    `budget_s`: once this much time is spent, a model never decided before (its first decision
    may need fresh capacity solves, 0.1-1 s each) is left for the next pass (DEFERRED), while
    models already decided are still decided (their inputs are mostly cached). A thousand new
    models then get their first decisions over a few passes instead of one pass of minutes that
    would stop autoscaling for everyone else. Jobs run warm first, then cold, in order."""
    started = time.perf_counter()
    order = sorted(range(len(jobs)), key=lambda i: jobs[i].state.capacity_inputs is None)
    out: list[tuple[Decision, PolicyState] | str] = [DEFERRED] * len(jobs)
    for index in order:
        job = jobs[index]
        cold = job.state.capacity_inputs is None and job.observation.metrics_available
        if cold and budget_s is not None and time.perf_counter() - started > budget_s:
            continue
        try:
            out[index] = decide_strictest(job.observation, job.configs, job.state, job.profile, dict(job.ttft_slo_s))
        except Exception as exc:  # noqa: BLE001 - reported per model by the pass
            out[index] = f"{type(exc).__name__}: {exc}"
    return out


FitCapacities = tuple[float | None, float | None]  # capacity per replica with the prior and the fitted engine


@dataclass(frozen=True)
class PassAnswers:
    """What the capacity maths of one pass gave: each job's decision (or its error text, or
    DEFERRED), the engine fit's capacities (fit_capacities, for jobs with a prior that were
    decided) and how many capacity-model solves it took (cache misses: the costly part)."""

    answers: list[tuple[Decision, PolicyState] | str]
    fits: list[FitCapacities]
    solves: int


def decide_all_counted(jobs: Sequence[DecideJob], budget_s: float | None = None) -> PassAnswers:
    """decide_all, then fit_capacities for every decided job with a prior (the same solves, in the
    same process, so both hit the same caches and neither runs on the event loop)."""
    from kiban.autoscale.policy import capacity_cache_misses

    before = capacity_cache_misses()
    out = decide_all(jobs, budget_s)
    fits: list[FitCapacities] = []
    for job, answer in zip(jobs, out):
        fit: FitCapacities = (None, None)
        if job.prior is not None and not isinstance(answer, str):
            try:
                fit = fit_capacities(job.prior, job.profile, job.observation, job.configs)
            except Exception as exc:  # noqa: BLE001 - the decision stands; the fit's numbers are unknown
                log.warning(kv("Skipped the engine fit's capacities", error=f"{type(exc).__name__}: {exc}"))
        fits.append(fit)
    return PassAnswers(out, fits, capacity_cache_misses() - before)
