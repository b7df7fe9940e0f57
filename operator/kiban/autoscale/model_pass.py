"""The autoscaler: one pass over every FoundationModel at once, every interval, on the leader only.

A pass: read every model from the operator's cache (pure preparation) → one batched
Prometheus collection for all of them (kiban.autoscale.collector, on the autoscaler's own
bounded executor behind a circuit breaker, never the reconciler's I/O pool) → the drift windows
that are due, batched the same way → each model's engine learned from its engines' counters
and pods (kiban.autoscale.learning, in a thread) → the capacity maths for every model, and the
engine fit's capacities, in one call off the event loop (a worker process, `Decider`) → writes,
Events and metrics per model.

The decision is kiban.autoscale.policy.decide (pure); Prometheus sits behind the collector's
Protocol; every write goes through the operator's single writer (kiban.reconcile.apply):

- replicas: the FoundationModel's scale subresource (spec.scaling.replicas), field manager
  `kiban-autoscaler`; the reconciler applies it to the Deployment (the operator's one replica
  knob, see kiban.reconcile.run). The autoscaler never writes the Deployment.
- status.scaling (desiredReplicas, reason with the numbers, predicted TTFT/ITL p95, capacity
  per replica, observed arrival rate, lastScaleTime) and the conditions MetricsAvailable and
  ScalingLimited; the reconciler's own conditions are kept as they are.
- an Event on the FoundationModel for every scale ("Scaled from 1 to 3: λ=...") and when
  metrics go missing or the decision hits maxReplicas / the GPU budget.
- the per-model operator metrics of docs/metrics.md.
- drift (spec.drift.enabled): once per drift window, the token and ITL histograms go through
  kiban.drift (see kiban.drift.tracker): condition DriftDetected, status.drift, Events,
  kiban_drift_score / kiban_drift_detected; on workload drift the capacity model takes the new
  window's token means at once (until its token window holds only the new mix).
- the engine, learned online (kiban.autoscale.learning): every pass adds each engine's vLLM
  counters to a fit of the step times around the datasheet profile, and the model's pods'
  creation → Ready times to the cold start; decisions size with the fitted engine and look
  ahead by the learned cold start; status.scaling.engine shows prior, fitted value and sd, and
  an Event (EngineRefit) says when the fit moved capacity per replica by more than 20 %. A new
  engine revision or service-time drift starts the evidence again; workload drift discounts it.

Ownership of status (server-side apply on /status, one field manager per writer): the
autoscaler (`kiban-autoscaler`) applies only status.scaling and its conditions
(MetricsAvailable, ScalingLimited, ScalingActive); drift (`kiban-drift`) only status.drift and
DriftDetected; the reconciler (`kiban`) the rest. No writer carries another's fields, so none
can revert them.

Failures are said out loud: a scale write the API server refuses is ScalingActive=False
(ScalingFailed, with the server's message) and a Warning Event, and the policy's state is left
as it was (the scale did not happen); a model whose accelerator profile has no engine profile
is ScalingActive=False (NoEngineProfile, naming the profile), never silently unscaled.

PolicyState lives per model UID in an `Autoscaler`, which one operator instance owns (the
OperatorContext's `autoscaler`, made by kiban.operator_cli.build_context); nothing is kept at
module level, and a deleted model's memory goes with it (a model re-created under the same
name starts afresh). A model first seen by this instance (operator start, leader change)
starts with its current replicas in the scale-down window, so a restart never triggers a
scale-down before the stabilisation window has passed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kiban.api.v1alpha1 import FoundationModel, ScalingStatus, SloSpec, plain
from kiban.autoscale import learning, wake
from kiban.autoscale.breaker import CircuitBreaker
from kiban.autoscale.deciding import (  # noqa: F401 - re-exported: the worker process's side
    DEFERRED,
    DecideJob,
    FitCapacities,
    PassAnswers,
    decide_all,
    decide_all_counted,
    decide_strictest,
    fit_capacities,
)
from kiban.autoscale.collector import (
    NO_SERIES,
    Collected,
    Collector,
    DriftSeries,
    GuardedPrometheus,
    PrometheusHttp,
    PrometheusQuery,
    PrometheusUnavailable,
    SeriesKey,
    Target,
    drift_range_s,
    series_key,
)
from kiban.autoscale.policy import Decision, Observation, PolicyState, ScalingConfig, capacity_per_replica_rps
from kiban.capacity.batching import Slo
from kiban.clock import rfc3339
from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.fitting import DEFAULT_MAX_NUM_BATCHED_TOKENS
from kiban.config import ConfigError
from kiban.drift import tracker as drift
from kiban.drift.detector import DriftConfig
from kiban.metrics import ModelKey, OperatorMetrics
from kiban.reconcile import observe
from kiban.reconcile.apply import api_error_message
from kiban.reconcile.logfmt import kv
from kiban.reconcile.pool import URGENT
from kiban.reconcile.status import condition, merge_conditions

log = logging.getLogger("kiban.autoscale")

FIELD_MANAGER = "kiban-autoscaler"
DRIFT_FIELD_MANAGER = "kiban-drift"
METRICS_AVAILABLE = "MetricsAvailable"
SCALING_LIMITED = "ScalingLimited"
SCALING_ACTIVE = "ScalingActive"
OWN_CONDITIONS = (METRICS_AVAILABLE, SCALING_LIMITED, SCALING_ACTIVE)
DRIFT_CONDITIONS = (drift.DRIFT_DETECTED,)
# ScalingActive reasons
ACTIVE = "Autoscaling"
NO_ENGINE_PROFILE = "NoEngineProfile"
SCALING_FAILED = "ScalingFailed"
INVALID_SCALING = "InvalidScalingSpec"
MAX_BREAKER_COOLDOWN_S = 120.0  # the breaker's longest wait, unless one interval is longer
PROMETHEUS_THREADS = 4  # Prometheus queries in flight at once (the autoscaler's own executor)
# A pass waits for its writes at most this share of the interval; writes still queued behind the
# reconciler (a thousand new models' children) finish in the background, and their models sit
# out the passes until they land, so one slow write phase never stalls every model's next pass.
WRITE_WAIT_SHARE = 0.5
SOLVE_BUDGET_SHARE = 0.2  # of the interval, spent at most on new models' first decisions per pass
CAPACITY_WORKERS_ENV = "KIBAN_CAPACITY_WORKERS"  # processes for the capacity maths; 0: a thread
# Operator-wide overrides (tests, development): the drift window below the CRD's 60 s minimum,
# fewer samples per window with a PSI threshold to match (binned noise grows as samples shrink;
# the spec has no PSI field), and a token-mean window for the capacity model (default: the rate window).
DRIFT_ENV = {
    "KIBAN_DRIFT_WINDOW_SECONDS": "drift_window_s",
    "KIBAN_DRIFT_MIN_SAMPLES": "drift_min_samples",
    "KIBAN_DRIFT_PSI_THRESHOLD": "drift_psi_threshold",
    "KIBAN_TOKEN_WINDOW_SECONDS": "token_window_s",
}
LIMIT_REASONS = ("MaxReplicas", "GpuBudget")
DEFAULT_PARAMETERS_B = 8.0  # engine profile size when spec.model.parameters is not given
RATE_WINDOW_INTERVALS = 4  # default rate window: this many autoscale intervals
# default window of the token means and the prompt mix: the policy's own token_window_s (it
# rate-weights token means over 300 s anyway); a rate window's worth of requests (60 s) gives a
# low-traffic model a mix so noisy that the capacity model had to be solved again on most passes
DEFAULT_TOKEN_WINDOW_S = 300.0
FORGET_AFTER_S = 3600.0  # state of a model not seen for this long is dropped (deleted models)

ModelRef = tuple[str, str]


@dataclass(frozen=True)
class AutoscaleSettings:
    """How the autoscaler reads Prometheus and identifies itself."""

    prometheus_url: str
    interval_s: float = 15.0
    prometheus_bearer_token_file: str | None = None
    prometheus_ca_file: str | None = None
    rate_window_s: float | None = None  # None: RATE_WINDOW_INTERVALS x interval_s
    namespace_label: bool = True  # the scrape adds `namespace` (PodMonitor does): match on it
    query_timeout_s: float = 5.0
    field_manager: str = FIELD_MANAGER
    drift_field_manager: str = DRIFT_FIELD_MANAGER
    namespace: str | None = None  # the one watched namespace: every query is narrowed to it
    capacity_workers: int = 1  # processes for the capacity maths (0: a thread of this process)
    token_window_s: float | None = None  # token means for the capacity model; None: the rate window
    drift_window_s: float | None = None  # overrides spec.drift.windowSeconds
    drift_min_samples: int | None = None  # overrides the detector's min_samples
    drift_psi_threshold: float | None = None  # overrides the detector's psi_threshold
    engine_fit: bool = True  # learn the engine's step times online (KIBAN_ENGINE_FIT=false pins the datasheet)

    @property
    def window_s(self) -> float:
        return self.rate_window_s if self.rate_window_s is not None else RATE_WINDOW_INTERVALS * self.interval_s

    @property
    def tokens_window_s(self) -> float:
        return self.token_window_s if self.token_window_s is not None else max(DEFAULT_TOKEN_WINDOW_S, self.window_s)

    @classmethod
    def from_config(cls, config: Any, environ: Mapping[str, str] | None = None,
                    namespace: str | None = None) -> AutoscaleSettings:
        """From OperatorConfig (Prometheus URL, autoscale interval), the KIBAN_DRIFT_* /
        KIBAN_TOKEN_WINDOW_SECONDS overrides of DRIFT_ENV and KIBAN_CAPACITY_WORKERS."""
        environ = os.environ if environ is None else environ
        workers_text = environ.get(CAPACITY_WORKERS_ENV, "1")
        try:
            workers = int(workers_text)
        except ValueError:
            raise ConfigError(f"{CAPACITY_WORKERS_ENV} must be an integer >= 0, got {workers_text!r}") from None
        if workers < 0:
            raise ConfigError(f"{CAPACITY_WORKERS_ENV} must be an integer >= 0, got {workers_text!r}")
        return cls(prometheus_url=config.prometheus_url, interval_s=float(config.autoscale_interval_seconds),
                   prometheus_bearer_token_file=config.prometheus_bearer_token_file,
                   prometheus_ca_file=config.prometheus_ca_file, namespace=namespace,
                   capacity_workers=workers, engine_fit=engine_fit_setting(environ), **drift_overrides(environ))


ENGINE_FIT_ENV = "KIBAN_ENGINE_FIT"


def engine_fit_setting(environ: Mapping[str, str]) -> bool:
    """KIBAN_ENGINE_FIT (default true). false sizes with the datasheet profile as it is: for a
    simulator run faster than real time (--speedup), whose engine-time latencies against
    wall-time rates no fit can read, or a profile measured on the very GPU. Cold starts are
    learned either way."""
    text = (environ.get(ENGINE_FIT_ENV) or "true").strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{ENGINE_FIT_ENV} must be true or false, got {text!r}")


def drift_overrides(environ: Mapping[str, str]) -> dict[str, float | int]:
    """The DRIFT_ENV variables that are set, typed; a bad value raises ConfigError naming it."""
    out: dict[str, float | int] = {}
    for name, field_name in DRIFT_ENV.items():
        text = environ.get(name)
        if not text:
            continue
        try:
            value = int(text) if field_name == "drift_min_samples" else float(text)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be > 0, got {text!r}")
        out[field_name] = value
    return out


# -- pure: spec → policy inputs ------------------------------------------------------------------


def collector_for(prometheus: PrometheusQuery, settings: AutoscaleSettings) -> Collector:
    """The autoscaler's collector on `prometheus` with the settings' windows and scope (the
    operator's, and the benchmark's Kiban on its Prometheus stand-in: one construction for both)."""
    return Collector(prometheus, settings.window_s, namespace_label=settings.namespace_label,
                     token_window_s=settings.tokens_window_s, namespace=settings.namespace)


def slos_from(spec: SloSpec) -> tuple[Slo, ...]:
    """One Slo per TTFT percentile in the spec (the policy's Slo holds one), each with the ITL target."""
    itl = float(spec.itl_p95_ms) if spec.itl_p95_ms is not None else None
    slos = [Slo(ttft_ms=float(ms), ttft_percentile=pct, itl_ms=itl)
            for pct, ms in ((95, spec.ttft_p95_ms), (99, spec.ttft_p99_ms)) if ms is not None]
    return tuple(slos) or (Slo(itl_ms=itl),)


def scaling_configs(model: FoundationModel, gpus_per_replica: int) -> tuple[ScalingConfig, ...]:
    """The policy's configs for a model's spec.scaling, one per TTFT percentile target."""
    scaling = model.spec.scaling
    if scaling.slo is None:
        raise ValueError("spec.scaling.slo is required when spec.scaling.autoscaling is true")
    common = dict(
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_utilization=scaling.target_utilization,
        peak_factor=scaling.peak_factor,
        scale_down_stabilization_s=float(scaling.stabilization_window_seconds),
        gpus_per_replica=gpus_per_replica,
        gpu_budget=scaling.gpu_budget,
    )
    if scaling.scale_to_zero_idle_seconds is not None:
        common["scale_to_zero_idle_s"] = float(scaling.scale_to_zero_idle_seconds)
    return tuple(ScalingConfig(slo=slo, **common) for slo in slos_from(scaling.slo))


def engine_profile_for(model: FoundationModel) -> EngineProfile:
    """The engine profile of the model's accelerator and size, with the spec's --max-num-seqs."""
    from kiban.capacity.profiles import get_profile

    count = model.spec.model.parameter_count
    profile = get_profile(model.spec.accelerator.profile, count / 1e9 if count else DEFAULT_PARAMETERS_B)
    if model.spec.engine.max_num_seqs is not None:
        profile = replace(profile, max_num_seqs=model.spec.engine.max_num_seqs)
    return profile


def ttft_percentiles(configs: Sequence[ScalingConfig]) -> tuple[int, ...]:
    """The TTFT percentiles the configs' SLOs target (what the collector must observe)."""
    return tuple(sorted({c.slo.ttft_percentile for c in configs if c.slo.ttft_ms is not None}))


def seed_state(now_s: float, replicas: int) -> PolicyState:
    """A model first seen: its current size counts as recommended now, so no instant scale-down."""
    return PolicyState(recommendations=((now_s, replicas),), first_seen_time_s=now_s)


# -- pure: status, conditions, Events -----------------------------------------------------------



def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000.0, 3) if seconds is not None and math.isfinite(seconds) else None


def scaling_status(decision: Decision, collected: Collected, last_scale_time: str | None,
                   engine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """status.scaling as the CRD defines it (ScalingStatus, camelCase, milliseconds); `engine`:
    status.scaling.engine (engine_status)."""
    obs = collected.observation
    rate = obs.arrival_rate_rps if obs.metrics_available else None
    status = ScalingStatus(
        desired_replicas=decision.replicas,
        reason=decision.reason,
        predicted_ttft_p95_ms=_ms(decision.predicted_ttft_p95_s),
        predicted_itl_p95_ms=_ms(decision.predicted_itl_p95_s),
        capacity_per_replica_rps=(round(decision.capacity_per_replica_rps, 6)
                                  if decision.capacity_per_replica_rps is not None else None),
        arrival_rate_rps=round(rate, 6) if rate is not None else None,
        last_scale_time=last_scale_time,
        engine=engine,
    )
    return status.model_dump(mode="json", by_alias=True)  # None fields kept: a merge patch clears them


def autoscaler_conditions(decision: Decision, collected: Collected, generation: int) -> list[dict[str, Any]]:
    """MetricsAvailable and ScalingLimited for this decision (without lastTransitionTime)."""
    obs = collected.observation
    if obs.metrics_available and not decision.metrics_ok:  # e.g. requests in flight, none finished yet
        metrics = condition(METRICS_AVAILABLE, False, "IncompleteMetrics", decision.reason, generation)
    elif obs.metrics_available:
        metrics = condition(
            METRICS_AVAILABLE, True, "MetricsCollected",
            f"λ={obs.arrival_rate_rps:.3g} req/s from {collected.engines} engine(s) in Prometheus", generation,
        )
    else:
        metrics = condition(
            METRICS_AVAILABLE, False, collected.reason_code or "MetricsUnavailable",
            f"{obs.reason_unavailable}; replicas held at {decision.replicas}", generation,
        )
    if decision.limited:
        limited = condition(SCALING_LIMITED, True, decision.limited, decision.reason, generation)
    else:
        limited = condition(SCALING_LIMITED, False, "WithinLimits", "", generation)
    return [metrics, limited]


def scaling_active_condition(reason: str, message: str, generation: int) -> dict[str, Any]:
    """ScalingActive: True while decisions are made and applied; False, with why, when they
    cannot be (no engine profile, the scale write refused, a spec the autoscaler cannot use)."""
    return condition(SCALING_ACTIVE, reason == ACTIVE, reason, message, generation)


def no_engine_profile_message(profile: str, known: Sequence[str], replicas: int) -> str:
    return (f"accelerator profile {profile!r} has no engine profile, so the capacity model cannot size it: "
            f"autoscaling is held and replicas stay at {replicas} (scale by hand, or use an accelerator "
            f"profile of a GPU the capacity model knows: {', '.join(known)})")


def merge_own_conditions(
    existing: Sequence[Mapping[str, Any]], own: Sequence[Mapping[str, Any]], now: str
) -> list[dict[str, Any]]:
    """The full conditions list: everyone else's as they are, ours replaced (transition times kept)."""
    mine = merge_conditions(own, existing, now)
    own_types = {c["type"] for c in mine}
    return [dict(c) for c in existing if c.get("type") not in own_types] + mine


def scale_message(current: int, target: int, decision: Decision) -> str:
    """The Event text for one scale: 'Scaled from 1 to 3: <reason>'."""
    return f"Scaled from {current} to {target}: {decision.reason}"


def transition_events(
    existing: Sequence[Mapping[str, Any]], own: Sequence[Mapping[str, Any]]
) -> list[tuple[str, str, str]]:
    """(type, reason, message) Events for MetricsAvailable turning False and ScalingLimited turning True."""
    before = {c.get("type"): c for c in existing}
    events = []
    for cond in own:
        old = before.get(cond["type"])
        moved = old is None or old.get("status") != cond["status"] or old.get("reason") != cond["reason"]
        if not moved:
            continue
        if cond["type"] == METRICS_AVAILABLE and cond["status"] == "False":
            events.append(("Warning", "MetricsUnavailable", cond["message"]))
        elif cond["type"] == METRICS_AVAILABLE and old is not None and old.get("status") == "False":
            events.append(("Normal", "MetricsAvailable", cond["message"]))
        elif cond["type"] == SCALING_LIMITED and cond["status"] == "True":
            events.append(("Warning", "ScalingLimited", cond["message"]))
        elif cond["type"] == SCALING_ACTIVE and cond["status"] == "False" and cond["reason"] != SCALING_FAILED:
            events.append(("Warning", cond["reason"], cond["message"]))  # a failed scale posts its own, each time
    return events


def drift_status_patch(
    current_status: Mapping[str, Any], memory: drift.DriftMemory | None, generation: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The status.drift patch (empty when unchanged) and the DriftDetected condition (if any).

    Drift off: status.drift is removed once. No window compared yet: nothing is written.
    """
    if memory is None:
        return ({"drift": None} if current_status.get("drift") is not None else {}), []
    if memory.assessment is None:
        return {}, []
    status = drift.drift_status(memory.assessment, memory.refit)
    stored = {k: v for k, v in status.items() if v is not None}
    patch = {} if current_status.get("drift") == stored else {"drift": status}
    return patch, [drift.drift_condition(memory.assessment, generation, memory.refit)]


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def record_metrics(metrics: OperatorMetrics, key: ModelKey, decision: Decision, collected: Collected) -> None:
    """The per-model autoscaler gauges of docs/metrics.md (NaN where the value is unknown)."""
    obs = collected.observation
    metrics.set_model_gauge("desired_replicas", key, decision.replicas)
    metrics.set_model_gauge("predicted_ttft_p95_seconds", key, _nan_if_none(decision.predicted_ttft_p95_s))
    metrics.set_model_gauge("predicted_itl_p95_seconds", key, _nan_if_none(decision.predicted_itl_p95_s))
    metrics.set_model_gauge("capacity_per_replica_rps", key, _nan_if_none(decision.capacity_per_replica_rps))
    metrics.set_model_gauge("observed_arrival_rate_rps", key,
                            _nan_if_none(obs.arrival_rate_rps if obs.metrics_available else None))
    metrics.set_model_gauge("metrics_available", key, 1.0 if obs.metrics_available else 0.0)
    for reason in LIMIT_REASONS:
        metrics.set_model_gauge("scaling_limited", key, 1.0 if decision.limited == reason else 0.0, reason=reason)


# -- pure: the engine learned online --------------------------------------------------------------

ENGINE_REFIT_EVENT = "EngineRefit"  # the Event when the fit moved capacity per replica by more than 20 %
BATCHED_TOKENS_FLAG = "--max-num-batched-tokens"


def max_num_batched_tokens(model: FoundationModel) -> int:
    """The engine's token budget per step: --max-num-batched-tokens in spec.engine.extraArgs, else
    vLLM's default for the OpenAI server (2048)."""
    args = list(model.spec.engine.extra_args)
    for i, arg in enumerate(args):
        text = arg.split("=", 1)[1] if arg.startswith(BATCHED_TOKENS_FLAG + "=") else (
            args[i + 1] if arg == BATCHED_TOKENS_FLAG and i + 1 < len(args) else None)
        if text is not None:
            try:
                value = int(text)
            except ValueError:
                continue
            if value > 0:
                return value
    return DEFAULT_MAX_NUM_BATCHED_TOKENS


def learn_engine(memory: learning.LearningMemory | None, prior: EngineProfile, collected: Collected,
                 pods: Sequence[Mapping[str, Any]], now_s: float, revision: str, window_s: float,
                 budget: int = DEFAULT_MAX_NUM_BATCHED_TOKENS, fit: bool = True,
                 ) -> tuple[learning.LearningMemory, learning.Learned]:
    """This pass's evidence into the model's learning memory: the engines' counter increases over
    the rate window (weighted by the share of the window not seen at the last pass, since
    consecutive windows overlap) and its pods (kopf's pod index projection). `fit` false: no
    step-time evidence (the prior stays); the cold start is still learned."""
    memory = memory or learning.LearningMemory()
    last = memory.evidence.time_s
    weight = 1.0 if last is None else min(1.0, max(0.0, (now_s - last) / window_s))
    obs = collected.observation
    windows = collected.engine_windows if obs.metrics_available and fit else ()
    return learning.learn(memory, prior, windows, learning.pod_starts(pods), now_s, revision,
                          prompt_mix=obs.prompt_mix, weight=weight, max_num_batched_tokens=budget)


def learning_after_drift(memory: learning.LearningMemory, outcome: drift.DriftOutcome) -> learning.LearningMemory:
    """Service-time drift (or a regression after a spec change) starts the step-time evidence
    again; workload drift (a Refit) discounts it; otherwise it is kept."""
    assessment = outcome.assessment
    if assessment is not None and (assessment.service_time_drift or assessment.performance_regression):
        return learning.forget_engine(memory)
    if outcome.new_refit is not None:
        return learning.discount_engine(memory)
    return memory


def with_learned_startup(configs: Sequence[ScalingConfig], learned: learning.Learned) -> tuple[ScalingConfig, ...]:
    """The configs with the learned cold start as look-ahead (the spec has no field for it)."""
    return tuple(replace(c, startup_s=learned.startup.value_s) if c.startup_s is None else c for c in configs)


def engine_status(learned: learning.Learned, capacities: tuple[float | None, float | None]) -> dict[str, Any]:
    """status.scaling.engine (EngineFitStatus, camelCase): prior, fitted and sd per parameter."""
    from kiban.api.v1alpha1 import ColdStartStatus, EngineFitStatus, FittedParameter

    fit = learned.fit

    def parameter(name: str) -> FittedParameter:
        sd = fit.sd.get(name)
        return FittedParameter(prior=round(getattr(fit.prior, name), 6), fitted=round(getattr(fit.profile, name), 6),
                               sd=round(sd, 6) if sd is not None and math.isfinite(sd) else None)

    prior_rps, fitted_rps = capacities
    status = EngineFitStatus(
        alpha_ms=parameter("alpha_ms"), beta_ms=parameter("beta_ms"), gamma_ms=parameter("gamma_ms"),
        delta_ms=parameter("delta_ms"), mixed_step_cost="gamma" if fit.regime == "gamma>=alpha" else "alpha",
        observations=round(fit.observations, 1),
        capacity_prior_rps=round(prior_rps, 6) if prior_rps is not None else None,
        capacity_fitted_rps=round(fitted_rps, 6) if fitted_rps is not None else None,
        cold_start=ColdStartStatus(prior_seconds=round(learned.startup.prior_s, 3),
                                   learned_seconds=round(learned.startup.value_s, 3),
                                   samples=learned.startup.samples),
    )
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def record_engine_metrics(metrics: OperatorMetrics, key: ModelKey, learned: learning.Learned,
                          capacities: tuple[float | None, float | None]) -> None:
    """The engine fit's per-model gauges (docs/metrics.md): prior, fitted and sd per parameter,
    the cold start, and the fitted / prior capacity ratio."""
    fit = learned.fit
    for name in fit.sd:
        parameter = name.removesuffix("_ms")
        metrics.set_model_gauge("engine_parameter_ms", key, getattr(fit.prior, name), parameter=parameter,
                                estimate="prior")
        metrics.set_model_gauge("engine_parameter_ms", key, getattr(fit.profile, name), parameter=parameter,
                                estimate="fitted")
        metrics.set_model_gauge("engine_parameter_ms", key, fit.sd[name], parameter=parameter, estimate="sd")
    metrics.set_model_gauge("engine_cold_start_seconds", key, learned.startup.prior_s, estimate="prior")
    metrics.set_model_gauge("engine_cold_start_seconds", key, learned.startup.value_s, estimate="learned")
    prior_rps, fitted_rps = capacities
    metrics.set_model_gauge("engine_fit_capacity_ratio", key,
                            fitted_rps / prior_rps if prior_rps and fitted_rps is not None else float("nan"))


# -- pure: one model prepared for a pass --------------------------------------------------------


def strip_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A status object as server-side apply should send it: unknown values left out at every
    depth (an applied null is not a value, and the CRD refuses one where it wants a number, as in
    status.scaling.engine; leaving a field out lets its owner's apply remove it)."""
    return {k: (strip_none(v) if isinstance(v, Mapping) else v) for k, v in mapping.items() if v is not None}


def own_status(status: Mapping[str, Any], fields: Sequence[str], condition_types: Sequence[str]) -> dict[str, Any]:
    """The part of a status one writer owns: its fields and its conditions (for "did it change")."""
    out: dict[str, Any] = {key: status[key] for key in fields if status.get(key) is not None}
    conditions = [dict(c) for c in status.get("conditions") or () if c.get("type") in condition_types]
    if conditions:
        out["conditions"] = sorted(conditions, key=lambda c: c["type"])
    return out


def applied_status(fields: Mapping[str, Any], conditions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What one writer applies: its fields (None left out) and its conditions, sorted by type."""
    out = {key: (strip_none(value) if isinstance(value, Mapping) else value)
           for key, value in fields.items() if value is not None}
    if conditions:
        out["conditions"] = sorted((dict(c) for c in conditions), key=lambda c: c["type"])
    return out


STATUS_REFRESH_S = 300.0  # the autoscaler's numbers in status are at most this old...
MATERIAL_CHANGE = 0.10  # ...or within this relative change of the live ones (kiban_* gauges are live)
# numbers that moved by more than MATERIAL_CHANGE are rewritten at most every this many intervals
# (60 s at the default 15 s) when nothing a reader acts on changed (a replica count, a condition,
# wording): at low traffic some number moves 10 % nearly every pass, which cost one status write
# per model per pass (67/s at 1,000 models)
NUMBERS_REFRESH_INTERVALS = 4
_NUMBER = re.compile(r"[-+]?\d[\d.,]*(?:e[-+]?\d+)?")


def _shape(value: Any) -> Any:
    """A status value with the numbers in its strings blanked out (what a reader sees change)."""
    if isinstance(value, str):
        return _NUMBER.sub("#", value)
    if isinstance(value, float):  # measured numbers; counts (int: replicas, generations) stay exact
        return "#"
    if isinstance(value, Mapping):
        return {k: _shape(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, (list, tuple)):
        return [_shape(v) for v in value]
    return value


def status_write_due(before: Mapping[str, Any], wanted: Mapping[str, Any], age_s: float | None,
                     numbers_refresh_s: float) -> bool:
    """Whether to apply `wanted` over `before`, written `age_s` ago by this operator (None: not
    by this process): at once when a reader would see something new besides numbers; numbers
    that moved materially after `numbers_refresh_s`; any numbers after STATUS_REFRESH_S."""
    if not before or age_s is None or _shape(before) != _shape(wanted) or age_s >= STATUS_REFRESH_S:
        return True
    return age_s >= numbers_refresh_s and material_change(before, wanted)


def material_change(before: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a status apply would tell a reader something new: a replica count, a scale time,
    a condition's status or reason, wording that is not just numbers, or a number that moved
    more than MATERIAL_CHANGE. Writing every pass's fresh λ for every model cost the API server
    a write per model per interval (67/s at 1,000 models) for numbers the metrics carry anyway."""
    if _shape(before) != _shape(wanted):
        return True

    def numbers(value: Any) -> list[float]:
        if isinstance(value, float):
            return [value]
        if isinstance(value, str):
            return [float(x.replace(",", "")) for x in _NUMBER.findall(value) if x.replace(",", "").strip("+-.")]
        if isinstance(value, Mapping):
            return [n for k, v in sorted(value.items()) if k != "lastTransitionTime" for n in numbers(v)]
        if isinstance(value, (list, tuple)):
            return [n for v in value for n in numbers(v)]
        return []

    old, new = numbers(before), numbers(wanted)
    if len(old) != len(new):
        return True
    return any(abs(a - b) > MATERIAL_CHANGE * max(abs(a), abs(b), 1e-9) for a, b in zip(old, new))


@dataclass(frozen=True)
class Prepared:
    """A model the pass decides for: everything read from the cache and the spec (pure)."""

    ref: ModelRef
    uid: str
    body: Mapping[str, Any]
    model: FoundationModel
    configs: tuple[ScalingConfig, ...]
    profile: EngineProfile
    current: int
    ready: int
    generation: int
    drift_config: DriftConfig | None
    held: int = 0  # requests the gateway holds for the model (status.gateway.held, fresh entries)

    @property
    def waking(self) -> bool:
        """At zero replicas with requests held: no engine to read, so nothing to ask Prometheus."""
        return self.held > 0 and self.current == 0

    def target(self) -> Target:
        return Target(self.ref[0], self.model.served_model_name, self.current, self.ready,
                      ttft_percentiles(self.configs))


@dataclass(frozen=True)
class Held:
    """A model that wants autoscaling but cannot have it: said in ScalingActive=False (reason)."""

    ref: ModelRef
    uid: str
    body: Mapping[str, Any]
    generation: int
    reason: str
    message: str


@dataclass(frozen=True)
class Skipped:
    """A model the autoscaler leaves alone this pass; `clear`: its autoscaler status is to go."""

    ref: ModelRef
    uid: str
    body: Mapping[str, Any]
    why: str
    clear: bool = False


def prepare(body: Mapping[str, Any], indexes: Mapping[str, Any], config: Any,
            drift_config: Callable[[FoundationModel, ModelRef], DriftConfig | None],
            now_s: float) -> Prepared | Held | Skipped:
    """What the pass does with one cached model (pure but for the profile lookup)."""
    metadata = body.get("metadata") or {}
    ref: ModelRef = (metadata.get("namespace", ""), metadata.get("name", ""))
    uid = str(metadata.get("uid") or "")
    if metadata.get("deletionTimestamp"):
        return Skipped(ref, uid, body, "being deleted")
    try:
        model = FoundationModel.from_object(body)
    except ValidationError:
        return Skipped(ref, uid, body, "invalid spec (the reconciler reports it)")
    generation = int(model.metadata.generation or 0)
    current = model.spec.scaling.desired_replicas()
    if not model.spec.scaling.autoscaling:
        return Skipped(ref, uid, body, "autoscaling is off", clear=True)
    try:
        accelerator = config.profile(model.spec.accelerator.profile)
    except ConfigError:
        return Skipped(ref, uid, body, "unknown accelerator profile (the reconciler reports it)")
    from kiban.sizing import resolve_sizing

    sizing = resolve_sizing(model.spec, accelerator, config.max_nodes_per_replica)
    if not sizing.fits:
        return Skipped(ref, uid, body, "the model does not fit (the reconciler reports it)")
    try:
        configs = scaling_configs(model, sizing.gpus_per_replica)
    except ValueError as exc:
        return Held(ref, uid, body, generation, INVALID_SCALING, f"{exc}; replicas stay at {current}")
    try:
        profile = engine_profile_for(model)
    except KeyError:
        from kiban.capacity.profiles import PROFILES

        known = sorted({p.gpu for p in PROFILES.values()})
        return Held(ref, uid, body, generation, NO_ENGINE_PROFILE,
                    no_engine_profile_message(model.spec.accelerator.profile, known, current))
    # a LeaderWorkerSet group is one replica, ready only when all its pods are
    ready = observe.ready_replicas(observe.observed_children(indexes, ref), sizing.multi_node)
    return Prepared(ref, uid, body, model, configs, profile, current, ready, generation, drift_config(model, ref),
                    wake.held_requests(body.get("status"), now_s))


def waking_collection(item: Prepared, now_s: float) -> Collected:
    """What a model waking from zero is observed as: no engine is scraped, the held requests are
    the signal (policy.wake_from_zero), and no Prometheus round trip delays the wake."""
    return Collected(Observation(
        time_s=now_s, metrics_available=False, reason_unavailable="no engine is running (waking from zero)",
        current_replicas=item.current, ready_replicas=item.ready, held_requests=item.held), reason_code=NO_SERIES)


# -- the capacity maths, off the event loop -------------------------------------------------------

WRITES_IN_FLIGHT = "its writes of an earlier pass are still in flight"


class Decider:
    """Runs decide_all for a whole pass in one call off the event loop: in a worker process
    (`workers` >= 1; its capacity caches stay warm between passes), else in a thread. A worker
    that dies is replaced, and that pass is decided in a thread."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.last_solves = 0  # capacity-model solves (cache misses) of the last run

    def _process_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # spawn: never fork a process that holds threads and sockets (the API client, kopf)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def run(self, jobs: Sequence[DecideJob],
                  budget_s: float | None = None) -> list[tuple[Decision, PolicyState] | str]:
        """The decisions alone (decide_pass without the engine fit's capacities)."""
        return (await self.decide_pass(jobs, budget_s)).answers

    async def decide_pass(self, jobs: Sequence[DecideJob], budget_s: float | None = None) -> PassAnswers:
        if not jobs:
            return PassAnswers([], [], 0)
        if self.workers > 0:
            loop = asyncio.get_running_loop()
            try:
                got = await loop.run_in_executor(self._process_pool(), decide_all_counted, list(jobs), budget_s)
                self.last_solves = got.solves
                return got
            except concurrent.futures.process.BrokenProcessPool:
                log.warning(kv("Capacity worker died; deciding this pass in a thread"))
                self.shutdown()
        got = await asyncio.to_thread(decide_all_counted, list(jobs), budget_s)
        self.last_solves = got.solves
        return got

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# -- the pass ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Learning:
    """One model's engine learning this pass, for _act: the memory after this pass's evidence,
    the learned engine, and the capacities with the prior and the fitted engine (fit_capacities)."""

    memory: learning.LearningMemory
    learned: learning.Learned
    capacities: FitCapacities = (None, None)


@dataclass
class _Memory:
    state: PolicyState
    seen_s: float
    drift: drift.DriftMemory | None = None
    learning: learning.LearningMemory | None = None


@dataclass
class PassResult:
    """What one pass did for one model, for logs and tests."""

    decision: Decision | None = None
    collected: Collected | None = None
    scaled_from: int | None = None
    scaled_to: int | None = None
    skipped: str | None = None  # why no decision was made (autoscaling off, invalid spec, ...)
    drift: Any = None  # the DriftAssessment when this pass ran a drift window
    error: str | None = None  # a scale write the API server refused
    learned: Any = None  # the engine as learned this pass (kiban.autoscale.learning.Learned)


@dataclass
class PassSummary:
    """One pass over every model."""

    results: dict[ModelRef, PassResult] = field(default_factory=dict)
    seconds: float = 0.0
    decided: int = 0
    deferred: int = 0  # models whose first decision waits for the next pass (decide_all's budget)
    phases: dict[str, float] = field(default_factory=dict)  # seconds in collect, decide, write


@dataclass
class Autoscaler:
    """Per-operator autoscaler: the collector, its Prometheus executor, the capacity decider and
    each model's PolicyState (by UID)."""

    collector: Collector
    settings: AutoscaleSettings
    clock: Callable[[], float] = time.time
    memory: dict[str, _Memory] = field(default_factory=dict)
    # per (uid, field manager): what our last status apply sent, so an identical one is skipped
    # while the watch has not delivered it yet
    applied: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    applied_at: dict[tuple[str, str], float] = field(default_factory=dict)
    decider: Decider = field(default_factory=lambda: Decider(0))
    executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(PROMETHEUS_THREADS, "kiban-prometheus"))
    metrics: OperatorMetrics | None = None  # Prometheus query latency (set by the operator)
    # models the gateway holds requests for at zero replicas, waiting for a wake pass (notice)
    waking: set[ModelRef] = field(default_factory=set)
    _woken: asyncio.Event = field(default_factory=asyncio.Event)
    # per model UID: its writes of an earlier pass still in flight (WRITE_WAIT_SHARE), and the
    # models a wake pass had to leave for that reason (woken again when their writes land)
    writing: dict[str, asyncio.Task] = field(default_factory=dict)
    wake_after_writes: dict[str, ModelRef] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: AutoscaleSettings, clock: Callable[[], float] = time.time) -> Autoscaler:
        prometheus = PrometheusHttp(settings.prometheus_url, timeout_s=settings.query_timeout_s,
                                    bearer_token_file=settings.prometheus_bearer_token_file,
                                    ca_file=settings.prometheus_ca_file)
        cooldown = max(settings.interval_s, 5.0)  # a tripped breaker waits one interval, then probes
        guarded = GuardedPrometheus(prometheus, CircuitBreaker(cooldown_s=cooldown,
                                                               max_cooldown_s=max(cooldown, MAX_BREAKER_COOLDOWN_S)))
        return cls(collector=collector_for(guarded, settings), settings=settings, clock=clock,
                   decider=Decider(settings.capacity_workers))

    def forget(self, uid: str) -> None:
        """A deleted model: its policy memory goes (a model re-created under its name starts afresh)."""
        self.memory.pop(uid, None)
        for key in [k for k in self.applied if k[0] == uid]:
            del self.applied[key]
            self.applied_at.pop(key, None)

    def shutdown(self) -> None:
        self.decider.shutdown()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def notice(self, context: Any, body: Mapping[str, Any]) -> bool:
        """A model's watch event: when the gateway holds requests for it at zero replicas, queue it
        for a wake pass and wake the autoscaler's task (kiban.tasks), so the model is decided now
        instead of at the next tick (kiban.autoscale.wake). Only the leader runs passes: on
        another replica nothing is queued. True when the model was queued."""
        metadata = body.get("metadata") or {}
        ref: ModelRef = (metadata.get("namespace", ""), metadata.get("name", ""))
        if not getattr(context, "leading", True) or ref in self.waking or not wake.wake_wanted(body, self.clock()):
            return False
        self.waking.add(ref)
        self._woken.set()
        return True

    async def wait_for_wake(self, timeout_s: float) -> set[ModelRef]:
        """Wait until a model is queued for a wake (notice) or `timeout_s` has passed; the
        models queued, taken off the queue (empty when the time ran out)."""
        if not self.waking:
            try:
                await asyncio.wait_for(self._woken.wait(), timeout=max(0.0, timeout_s))
            except asyncio.TimeoutError:
                pass
        self._woken.clear()
        refs, self.waking = self.waking, set()
        return refs

    async def _query(self, fn: Callable[[], Any]) -> Any:
        """Run one blocking Prometheus query on the autoscaler's executor, with a deadline."""
        started = time.perf_counter()
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn)
        try:
            result = await asyncio.wait_for(future, timeout=self.settings.query_timeout_s * 2 + 1)
        except asyncio.TimeoutError:
            self._observe_query(started, "error")
            raise PrometheusUnavailable(
                "PrometheusUnreachable",
                f"Prometheus did not answer within {self.settings.query_timeout_s * 2 + 1:.0f} s") from None
        except Exception:
            self._observe_query(started, "error")
            raise
        self._observe_query(started, "ok")
        return result

    def _observe_query(self, started: float, result: str) -> None:
        if self.metrics is not None:
            self.metrics.prometheus_query_duration_seconds.labels(result=result).observe(time.perf_counter() - started)

    def _drift_config(self, model: FoundationModel, ref: ModelRef) -> DriftConfig | None:
        """The detector's settings for this model; None when drift is off (or its settings are invalid)."""
        if not model.spec.drift.enabled:
            return None
        try:
            return drift.drift_config_from(model.spec.drift, window_s=self.settings.drift_window_s,
                                           min_samples=self.settings.drift_min_samples,
                                           psi_threshold=self.settings.drift_psi_threshold)
        except ValueError as exc:
            log.warning(kv("Skipped drift detection", name=ref[1], namespace=ref[0], error=str(exc)))
            return None

    def _key(self, prepared: Prepared) -> SeriesKey:
        return series_key(prepared.ref[0], prepared.model.served_model_name, self.settings.namespace_label)

    async def run_pass(self, context: Any, indexes: Mapping[str, Any],
                       only: Collection[ModelRef] | None = None) -> PassSummary:
        """One pass over every FoundationModel in the operator's cache, or over the models in
        `only` (a wake pass: the models notice() queued)."""
        started = time.perf_counter()
        now = self.clock()
        bodies = [dict(body) for ref, store in (indexes.get(observe.MODELS_INDEX) or {}).items()
                  if only is None or ref in only for body in store]
        prepared: list[Prepared] = []
        summary = PassSummary()
        writes: list[tuple[str, Any]] = []  # (model UID, its writes this pass)
        seen_uids: set[str] = set()
        for body in bodies:
            metadata = body.get("metadata") or {}
            uid = str(metadata.get("uid") or "")
            if uid in self.writing:  # an earlier pass's writes have not landed: decide it after they do
                seen_uids.add(uid)
                ref = (metadata.get("namespace", ""), metadata.get("name", ""))
                summary.results[ref] = PassResult(skipped=WRITES_IN_FLIGHT)
                if only is not None:  # a wake must not wait for the next full pass
                    self.wake_after_writes[uid] = ref
                continue
            item = prepare(body, indexes, context.config, self._drift_config, now)
            seen_uids.add(item.uid)
            if isinstance(item, Prepared):
                prepared.append(item)
            elif isinstance(item, Held):
                summary.results[item.ref] = PassResult(skipped=item.message)
                writes.append((item.uid, self._write_held(context, item)))
            else:
                summary.results[item.ref] = PassResult(skipped=item.why)
                if item.clear:
                    self.forget(item.uid)
                    writes.append((item.uid, self._clear_status(context, item.body)))
                elif item.why == "being deleted":
                    self.forget(item.uid)
        for uid in [u for u in self.memory if only is None and u not in seen_uids]:  # deleted while nobody watched
            self.forget(uid)

        mark = time.perf_counter()
        summary.phases["prepare"] = round(mark - started, 3)
        targets = [p.target() for p in prepared if not p.waking]
        collected = await self.collector.collect_all_async(targets, time_s=now, run=self._query) if targets else {}
        for item in prepared:
            if item.waking:
                collected[self._key(item)] = waking_collection(item, now)
            elif item.held:  # requests held while replicas start: traffic, never idle
                got = collected[self._key(item)]
                collected[self._key(item)] = replace(got, observation=replace(got.observation,
                                                                              held_requests=item.held))
        drifts = await self._drift_windows(prepared, collected, now)
        summary.phases["collect"] = round(time.perf_counter() - mark, 3)
        mark = time.perf_counter()

        learned_all = await asyncio.to_thread(self._learn_all, prepared, collected, indexes, now)
        summary.phases["learn"] = round(time.perf_counter() - mark, 3)
        mark = time.perf_counter()
        jobs, states = [], []
        for item, (learning_memory, learned) in zip(prepared, learned_all):
            memory = self.memory.get(item.uid)
            state = memory.state if memory else seed_state(now, item.current)
            got = collected[self._key(item)]
            drift_memory, outcome = drifts.get(item.uid, (None, drift.DriftOutcome(None, None)))
            learning_memory = learning_after_drift(learning_memory, outcome)
            if outcome.new_refit is not None:
                state = drift.reset_policy_state(state)
            if drift_memory is not None:
                got = replace(got, observation=drift.observation_with_refit(got.observation, drift_memory.refit))
            configs = with_learned_startup(item.configs, learned)
            jobs.append(DecideJob(got.observation, configs, state, learned.profile, dict(got.ttft_slo_s),
                                  prior=item.profile))
            states.append((got, drift_memory, outcome, learning_memory, learned))
        decided = await self.decider.decide_pass(jobs, budget_s=self.settings.interval_s * SOLVE_BUDGET_SHARE)
        summary.phases["decide"] = round(time.perf_counter() - mark, 3)
        summary.phases["solves"] = decided.solves
        mark = time.perf_counter()

        for item, (got, drift_memory, outcome, learning_memory, learned), answer, fit in zip(
                prepared, states, decided.answers, decided.fits):
            if answer == DEFERRED:
                summary.deferred += 1
                summary.results[item.ref] = PassResult(skipped="deferred to the next pass (first decision)")
                continue
            if isinstance(answer, str):
                log.warning(kv("Skipped autoscaling", name=item.ref[1], namespace=item.ref[0], error=answer))
                summary.results[item.ref] = PassResult(skipped=answer)
                continue
            summary.decided += 1
            writes.append((item.uid, self._act(context, item, got, answer, drift_memory, outcome, now, summary,
                                               Learning(learning_memory, learned, tuple(fit)))))
        summary.phases["deferred"] = summary.deferred
        if writes:
            summary.phases["writes_pending"] = await self._await_writes(writes, self.settings.interval_s * WRITE_WAIT_SHARE)
        summary.phases["write"] = round(time.perf_counter() - mark, 3)
        summary.seconds = time.perf_counter() - started
        if self.metrics is not None and only is None:  # wake passes are not what these gauges describe
            self.metrics.autoscaler_pass_duration_seconds.observe(summary.seconds)
            self.metrics.autoscaler_pass_models.set(summary.decided)
        return summary

    async def _await_writes(self, writes: Sequence[tuple[str, Any]], wait_s: float) -> int:
        """Run every model's writes; wait for them at most `wait_s`. Those still running carry on
        in the background, registered in `writing` until they land; returns how many."""
        tasks = {uid: asyncio.ensure_future(coroutine) for uid, coroutine in writes}
        _, pending = await asyncio.wait(tasks.values(), timeout=max(wait_s, 0.0))
        for uid, task in tasks.items():  # every pending one registered before any error is raised
            if task in pending:
                self.writing[uid] = task
                task.add_done_callback(lambda done, uid=uid: self._landed(uid, done))
        for task in tasks.values():
            if task not in pending and not task.cancelled() and task.exception() is not None:
                raise task.exception()
        return len(pending)

    def _landed(self, uid: str, task: asyncio.Task) -> None:
        if self.writing.get(uid) is task:
            del self.writing[uid]
        if (ref := self.wake_after_writes.pop(uid, None)) is not None:
            self.waking.add(ref)
            self._woken.set()
        if not task.cancelled() and task.exception() is not None:
            log.warning(kv("Autoscaler writes failed", uid=uid,
                           error=f"{type(task.exception()).__name__}: {task.exception()}"[:300]))

    def _learn_all(self, prepared: Sequence[Prepared], collected: Mapping[SeriesKey, Collected],
                   indexes: Mapping[str, Any], now: float) -> list[tuple[learning.LearningMemory, learning.Learned]]:
        """learn_engine for every model (about 1 ms each: run in a thread, off the event loop). A
        model whose evidence cannot be learned from keeps what it learned before (one bad model
        never costs the others their pass)."""
        pods_index = indexes.get(observe.PODS_INDEX)
        out = []
        for item in prepared:
            memory = self.memory.get(item.uid)
            got = collected[self._key(item)]
            revision = drift.engine_revision(item.body.get("spec") or {})
            budget = max_num_batched_tokens(item.model)
            try:
                out.append(learn_engine(memory.learning if memory else None, item.profile, got,
                                        observe.from_index(pods_index, item.ref), now, revision,
                                        self.settings.window_s, budget, fit=self.settings.engine_fit))
            except Exception as exc:  # noqa: BLE001 - said in the log; this pass adds no evidence
                log.warning(kv("Skipped the engine fit", name=item.ref[1], namespace=item.ref[0],
                               error=f"{type(exc).__name__}: {exc}"[:300]))
                out.append(learn_engine(memory.learning if memory else None, item.profile,
                                        replace(got, engine_windows=()), [], now, revision,
                                        self.settings.window_s, budget))
        return out

    async def _drift_windows(self, prepared: Sequence[Prepared], collected: Mapping[SeriesKey, Collected],
                             now: float) -> dict[str, tuple[drift.DriftMemory, drift.DriftOutcome]]:
        """The drift windows due this pass, one batched collection per distinct range, then the
        detector for each (pure); models with drift on but not due keep their memory."""
        out: dict[str, tuple[drift.DriftMemory, drift.DriftOutcome]] = {}
        due: dict[float, list[tuple[Prepared, drift.DriftMemory]]] = {}
        for item in prepared:
            if item.drift_config is None:
                continue
            memory = self.memory.get(item.uid)
            drift_memory = drift.note_revision((memory.drift if memory else None) or drift.DriftMemory(),
                                               drift.engine_revision(item.body.get("spec") or {}))
            drift_memory = drift.note_replicas(drift_memory, item.ready)
            out[item.uid] = (drift_memory, drift.DriftOutcome(None, None))
            if now >= drift_memory.next_window_s:
                range_s = drift_range_s(drift.window_range_s(drift_memory, now, item.drift_config))
                due.setdefault(range_s, []).append((item, drift_memory))
        for range_s, items in due.items():
            series = await self.collector.collect_drift_all_async(
                [self._key(item) for item, _ in items], time_s=now, window_s=range_s, run=self._query)
            for item, drift_memory in items:
                observation = collected[self._key(item)].observation
                out[item.uid] = self._drift_step(item, drift_memory, series[self._key(item)], range_s, now,
                                                 observation)
        return out

    def _drift_step(self, item: Prepared, memory: drift.DriftMemory, series: DriftSeries, range_s: float,
                    now: float, observation: Observation) -> tuple[drift.DriftMemory, drift.DriftOutcome]:
        ref, config = item.ref, item.drift_config
        if series.reason_code is not None:  # the next pass tries again; the range then covers the gap
            log.warning(kv("Skipped drift window", name=ref[1], namespace=ref[0], reason=series.reason_code,
                           detail=series.message))
            return memory, drift.DriftOutcome(None, None)
        used = drift.observation_with_refit(observation, memory.refit)
        try:
            memory, outcome = drift.drift_step(
                memory, series.buckets, series.sums, now_s=now, range_s=range_s, config=config,
                before=(used.mean_prompt_tokens, used.mean_output_tokens), token_window_s=self.settings.tokens_window_s,
                replicas=item.ready, batch_per_engine=series.batch_per_engine,
            )
        except ValueError as exc:  # histograms Prometheus answered that do not fit together: skip the window
            log.warning(kv("Skipped drift window", name=ref[1], namespace=ref[0], reason="InvalidHistogram",
                           detail=str(exc)))
            return replace(memory, next_window_s=now + config.window_s), drift.DriftOutcome(None, None)
        if outcome.assessment is not None:
            log.info(kv("Assessed drift", name=ref[1], namespace=ref[0], reason=outcome.assessment.reason,
                        detail=outcome.assessment.message))
        if outcome.new_refit is not None:
            log.info(kv("Re-fitted capacity model", name=ref[1], namespace=ref[0],
                        prompt_tokens=round(outcome.new_refit.prompt_after),
                        output_tokens=round(outcome.new_refit.output_after),
                        until=rfc3339(outcome.new_refit.until_s)))
        return memory, outcome

    async def _act(self, context: Any, item: Prepared, collected: Collected, answer: tuple[Decision, PolicyState],
                   drift_memory: drift.DriftMemory | None, outcome: drift.DriftOutcome, now: float,
                   summary: PassSummary, learned: Learning | None = None) -> None:
        """Write one model's decision: scale (if it changed), its status (status.scaling with the
        engine fit as status.scaling.engine), Events (EngineRefit among them), metrics."""
        decision, state = answer
        ref, current = item.ref, item.current
        previous = self.memory.get(item.uid)
        result = PassResult(decision=decision, collected=collected, drift=outcome.assessment,
                            learned=learned.learned if learned is not None else None)
        summary.results[ref] = result
        key = ModelKey(ref[0], ref[1], item.model.served_model_name)
        active = scaling_active_condition(ACTIVE, "replicas follow the capacity model every "
                                                  f"{self.settings.interval_s:g} s", item.generation)
        if decision.replicas != current:
            error = await self._scale(context, item, decision)
            if error is None:
                result.scaled_from, result.scaled_to = current, decision.replicas
                context.metrics.count_scale_event(key, "up" if decision.replicas > current else "down")
            else:  # the scale did not happen: the policy must not remember it as done
                result.error = error
                state = previous.state if previous else seed_state(now, current)
                message = f"scaling from {current} to {decision.replicas} replicas failed: {error}"
                active = scaling_active_condition(SCALING_FAILED, message, item.generation)
                # every attempt, as the HPA's FailedRescale: the recorder counts repeats on one Event
                context.post_event_later(item.body, "Warning", SCALING_FAILED, message)
        elif not decision.metrics_ok:
            log.debug(kv("Held replicas: metrics unavailable", name=ref[1], namespace=ref[0],
                         replicas=current, reason=decision.reason))
        engine = None
        learning_memory = previous.learning if previous else None
        if learned is not None:  # the evidence is real whether or not the scale went through
            learning_memory, refit_message = learning.capacity_moved(learned.memory, *learned.capacities,
                                                                     fit=learned.learned.fit)
            engine = engine_status(learned.learned, learned.capacities)
            if refit_message is not None:
                log.info(kv("Engine fit moved capacity", name=ref[1], namespace=ref[0], detail=refit_message))
                context.post_event_later(item.body, "Normal", ENGINE_REFIT_EVENT, refit_message)
            record_engine_metrics(context.metrics, key, learned.learned, learned.capacities)
        self.memory[item.uid] = _Memory(state, now, drift_memory, learning_memory)
        current_status = item.body.get("status") or {}
        if result.error is None:
            last_scale = (rfc3339(state.last_scale_time_s) if state.last_scale_time_s is not None
                          else (current_status.get("scaling") or {}).get("lastScaleTime"))
            scaling = scaling_status(decision, collected, last_scale, engine)
        else:
            scaling = dict(current_status.get("scaling") or {})  # unchanged: nothing was scaled
        own = autoscaler_conditions(decision, collected, item.generation) + [active]
        await self._apply(context, item.body, {"scaling": scaling}, own)
        await self._apply_drift(context, item.body, drift_memory, outcome, item.generation)
        record_metrics(context.metrics, key, decision, collected)
        if outcome.assessment is not None:
            for attribute, value, labels in drift.drift_metric_values(outcome.assessment):
                context.metrics.set_model_gauge(attribute, key, value, **labels)

    async def _scale(self, context: Any, item: Prepared, decision: Decision) -> str | None:
        """Write the scale subresource; the API server's message when it refuses."""
        namespace, name = item.ref
        try:
            # as urgent as a Deployment apply: it is what starts (or stops) pods
            await context.io(context.writer.scale_foundation_model, namespace, name, decision.replicas,
                             self.settings.field_manager, priority=URGENT)
        except ApiException as exc:
            message = api_error_message(exc)
            log.warning(kv("Failed to scale FoundationModel", name=name, namespace=namespace,
                           to=decision.replicas, error=message))
            return message
        except Exception as exc:  # noqa: BLE001 - no connection: the same story, said the same way
            message = f"{type(exc).__name__}: {exc}"[:500]
            log.warning(kv("Failed to scale FoundationModel", name=name, namespace=namespace,
                           to=decision.replicas, error=message))
            return message
        log.info(kv("Scaled FoundationModel", name=name, namespace=namespace, from_replicas=item.current,
                    to_replicas=decision.replicas, reason=decision.reason))
        context.post_event_later(item.body, "Normal", "Scaled", scale_message(item.current, decision.replicas, decision))
        return None

    async def _apply(self, context: Any, body: Mapping[str, Any], fields: Mapping[str, Any],
                     own: Sequence[Mapping[str, Any]]) -> None:
        """Server-side apply of the autoscaler's own status fields, when they changed."""
        await self._apply_as(context, body, fields, own, OWN_CONDITIONS, ("scaling",), self.settings.field_manager)

    async def _apply_as(self, context: Any, body: Mapping[str, Any], fields: Mapping[str, Any],
                        own: Sequence[Mapping[str, Any]], types: Sequence[str], field_names: Sequence[str],
                        manager: str) -> bool:
        """Apply one writer's fields and conditions as `manager`; False when nothing was written."""
        metadata = body["metadata"]
        slot = (str(metadata.get("uid") or ""), manager)
        current_status = body.get("status") or {}
        existing = [c for c in current_status.get("conditions") or () if c.get("type") in types]
        conditions = merge_conditions(own, existing, rfc3339(self.clock()))
        wanted = applied_status(fields, conditions)
        before = own_status(current_status, field_names, types)
        if wanted == before or self.applied.get(slot) == wanted:
            return False
        written_at = self.applied_at.get(slot)
        if not status_write_due(before, wanted, None if written_at is None else self.clock() - written_at,
                                NUMBERS_REFRESH_INTERVALS * self.settings.interval_s):
            return False  # only numbers moved: status_write_due says when they are rewritten
        try:
            await context.io(context.writer.apply_status, metadata["namespace"], metadata["name"], wanted, manager)
        except ApiException as exc:
            log.warning(kv("Failed to apply status", name=metadata["name"], namespace=metadata["namespace"],
                           field_manager=manager, error=api_error_message(exc)))
            return False
        except Exception as exc:  # noqa: BLE001 - the next pass tries again
            log.warning(kv("Failed to apply status", name=metadata["name"], namespace=metadata["namespace"],
                           field_manager=manager, error=f"{type(exc).__name__}: {exc}"[:300]))
            return False
        self.applied[slot] = wanted
        self.applied_at[slot] = self.clock()
        events = transition_events(existing, own) if manager == self.settings.field_manager else []
        for event_type, reason, message in events:
            context.post_event_later(body, event_type, reason, message)
        return True

    async def _apply_drift(self, context: Any, body: Mapping[str, Any], drift_memory: drift.DriftMemory | None,
                           outcome: drift.DriftOutcome, generation: int) -> None:
        """status.drift and DriftDetected, applied as the drift field manager when a window was
        assessed; removed (an empty apply) when drift was switched off."""
        current_status = body.get("status") or {}
        previous = next((c for c in current_status.get("conditions") or ()
                         if c.get("type") == drift.DRIFT_DETECTED), None)
        if drift_memory is None:
            if current_status.get("drift") is None and previous is None:
                return
            await self._apply_as(context, body, {}, [], DRIFT_CONDITIONS, ("drift",), self.settings.drift_field_manager)
            return
        if drift_memory.assessment is None:
            return
        cond = drift.drift_condition(drift_memory.assessment, generation, drift_memory.refit)
        status = drift.drift_status(drift_memory.assessment, drift_memory.refit)
        wrote = await self._apply_as(context, body, {"drift": status}, [cond], DRIFT_CONDITIONS, ("drift",),
                                     self.settings.drift_field_manager)
        if wrote or outcome.new_refit is not None:
            for event_type, reason, message in drift.drift_events(previous, cond, outcome.new_refit):
                context.post_event_later(body, event_type, reason, message)

    async def _write_held(self, context: Any, item: Held) -> None:
        """A model that cannot be autoscaled: ScalingActive=False with why; the numbers of earlier
        decisions (status.scaling, MetricsAvailable, ScalingLimited) are removed, not left stale."""
        cond = scaling_active_condition(item.reason, item.message, item.generation)
        await self._apply(context, item.body, {}, [cond])

    async def _clear_status(self, context: Any, body: Mapping[str, Any]) -> None:
        """Autoscaling switched off: the autoscaler's and drift's fields and conditions go, once
        (an empty apply removes what the manager applied before)."""
        status = body.get("status") or {}
        if own_status(status, ("scaling",), OWN_CONDITIONS):
            await self._apply_as(context, body, {}, [], OWN_CONDITIONS, ("scaling",), self.settings.field_manager)
        if own_status(status, ("drift",), DRIFT_CONDITIONS):
            await self._apply_as(context, body, {}, [], DRIFT_CONDITIONS, ("drift",),
                                 self.settings.drift_field_manager)
