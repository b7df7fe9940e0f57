"""One autoscaling pass for one FoundationModel: collect → decide → write → status → Events → metrics.

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

PolicyState lives per model in an `Autoscaler`, which one operator instance owns (the
OperatorContext's `autoscaler`, made by kiban.operator_cli.build_context); nothing is kept at
module level. A model first seen by this instance
(operator start, leader change) starts with its current replicas in the scale-down window, so a
restart never triggers a scale-down before the stabilisation window has passed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kiban.api.v1alpha1 import FoundationModel, ScalingStatus, SloSpec, plain
from kiban.autoscale import learning, wake
from kiban.autoscale.collector import NO_SERIES, Collected, Collector, DriftSeries, PrometheusHttp
from kiban.autoscale.policy import (Decision, Observation, PolicyState, ScalingConfig, capacity_per_replica_rps, decide,
                                    round_tokens_up)
from kiban.capacity.batching import Slo
from kiban.clock import rfc3339
from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.fitting import DEFAULT_MAX_NUM_BATCHED_TOKENS
from kiban.config import ConfigError
from kiban.drift import tracker as drift
from kiban.drift.detector import DriftConfig
from kiban.metrics import ModelKey, OperatorMetrics
from kiban.reconcile import observe
from kiban.reconcile.logfmt import kv
from kiban.reconcile.status import condition, merge_conditions

log = logging.getLogger("kiban.autoscale")

FIELD_MANAGER = "kiban-autoscaler"
METRICS_AVAILABLE = "MetricsAvailable"
SCALING_LIMITED = "ScalingLimited"
OWN_CONDITIONS = (METRICS_AVAILABLE, SCALING_LIMITED)
DRIFT_CONDITIONS = (drift.DRIFT_DETECTED,)
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
    token_window_s: float | None = None  # token means for the capacity model; None: the rate window
    drift_window_s: float | None = None  # overrides spec.drift.windowSeconds
    drift_min_samples: int | None = None  # overrides the detector's min_samples
    drift_psi_threshold: float | None = None  # overrides the detector's psi_threshold

    @property
    def window_s(self) -> float:
        return self.rate_window_s if self.rate_window_s is not None else RATE_WINDOW_INTERVALS * self.interval_s

    @property
    def tokens_window_s(self) -> float:
        return self.token_window_s if self.token_window_s is not None else self.window_s

    @classmethod
    def from_config(cls, config: Any, environ: Mapping[str, str] | None = None) -> AutoscaleSettings:
        """From OperatorConfig (Prometheus URL, autoscale interval) and the KIBAN_DRIFT_* /
        KIBAN_TOKEN_WINDOW_SECONDS overrides of DRIFT_ENV."""
        return cls(prometheus_url=config.prometheus_url, interval_s=float(config.autoscale_interval_seconds),
                   prometheus_bearer_token_file=config.prometheus_bearer_token_file,
                   prometheus_ca_file=config.prometheus_ca_file,
                   **drift_overrides(os.environ if environ is None else environ))


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
                 budget: int = DEFAULT_MAX_NUM_BATCHED_TOKENS) -> tuple[learning.LearningMemory, learning.Learned]:
    """This pass's evidence into the model's learning memory: the engines' counter increases over
    the rate window (weighted by the share of the window not seen at the last pass, since
    consecutive windows overlap) and its pods (kopf's pod index projection)."""
    memory = memory or learning.LearningMemory()
    last = memory.evidence.time_s
    weight = 1.0 if last is None else min(1.0, max(0.0, (now_s - last) / window_s))
    obs = collected.observation
    windows = collected.engine_windows if obs.metrics_available else ()
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


# -- the pass ------------------------------------------------------------------------------------


@dataclass
class _Memory:
    state: PolicyState
    seen_s: float
    drift: drift.DriftMemory | None = None
    learning: learning.LearningMemory | None = None


@dataclass
class PassResult:
    """What one pass did, for logs and tests."""

    decision: Decision | None = None
    collected: Collected | None = None
    scaled_from: int | None = None
    scaled_to: int | None = None
    skipped: str | None = None  # why no decision was made (autoscaling off, invalid spec, ...)
    drift: Any = None  # the DriftAssessment when this pass ran a drift window
    learned: Any = None  # the engine as learned this pass (kiban.autoscale.learning.Learned)


@dataclass
class Autoscaler:
    """Per-operator autoscaler: the collector and each model's PolicyState."""

    collector: Collector
    settings: AutoscaleSettings
    clock: Callable[[], float] = time.time
    memory: dict[ModelRef, _Memory] = field(default_factory=dict)
    _waking: set[ModelRef] = field(default_factory=set)  # models with a wake pass in flight (notice)

    @classmethod
    def from_settings(cls, settings: AutoscaleSettings, clock: Callable[[], float] = time.time) -> Autoscaler:
        prometheus = PrometheusHttp(settings.prometheus_url, timeout_s=settings.query_timeout_s,
                                    bearer_token_file=settings.prometheus_bearer_token_file,
                                    ca_file=settings.prometheus_ca_file)
        collector = Collector(prometheus, settings.window_s, namespace_label=settings.namespace_label,
                              token_window_s=settings.token_window_s)
        return cls(collector=collector, settings=settings, clock=clock)

    def forget(self, ref: ModelRef) -> None:
        self.memory.pop(ref, None)

    def notice(self, context: Any, body: Mapping[str, Any], indexes: Mapping[str, Any]) -> asyncio.Task | None:
        """A model's watch event: when the gateway holds requests for it at zero replicas, run its
        pass now instead of at the next tick (kiban.autoscale.wake). One such pass at a time per model."""
        metadata = body.get("metadata") or {}
        ref: ModelRef = (metadata.get("namespace", ""), metadata.get("name", ""))
        if ref in self._waking or not wake.wake_wanted(body, self.clock()):
            return None
        self._waking.add(ref)

        async def run() -> None:
            try:
                await self.run_once(context, body, indexes)
            except Exception as exc:  # noqa: BLE001 - the timer's next pass tries again
                log.warning(kv("Failed to wake FoundationModel", name=ref[1], namespace=ref[0], error=repr(exc)))
            finally:
                self._waking.discard(ref)

        return asyncio.get_running_loop().create_task(run())

    def _forget_stale(self, now_s: float) -> None:
        for ref in [r for r, m in self.memory.items() if now_s - m.seen_s > FORGET_AFTER_S]:
            del self.memory[ref]

    async def run_once(self, context: Any, body: Mapping[str, Any], indexes: Mapping[str, Any]) -> PassResult:
        """One pass for the FoundationModel in `body` (the newest copy in the models index wins)."""
        metadata = body["metadata"]
        ref: ModelRef = (metadata["namespace"], metadata["name"])
        cached = observe.from_index(indexes.get(observe.MODELS_INDEX), ref)
        body = cached[0] if cached else plain(body)
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            self.forget(ref)
            return PassResult(skipped="being deleted")
        try:
            model = FoundationModel.from_object(body)
        except ValidationError:
            return PassResult(skipped="invalid spec (the reconciler reports it)")
        if not model.spec.scaling.autoscaling:
            self.forget(ref)
            await self._clear_status(context, body)
            return PassResult(skipped="autoscaling is off")
        try:
            accelerator = context.config.profile(model.spec.accelerator.profile)
            from kiban.sizing import resolve_sizing

            sizing = resolve_sizing(model.spec, accelerator, context.config.max_nodes_per_replica)
            if not sizing.fits:
                return PassResult(skipped="the model does not fit (the reconciler reports it)")
            configs = scaling_configs(model, sizing.gpus_per_replica)
            profile = engine_profile_for(model)
        except (ConfigError, KeyError, ValueError) as exc:
            log.warning(kv("Skipped autoscaling", name=ref[1], namespace=ref[0], error=str(exc)))
            return PassResult(skipped=str(exc))

        now = self.clock()
        self._forget_stale(now)
        current = model.spec.scaling.desired_replicas()
        ready = observe.ready_replicas(observe.observed_children(indexes, ref), sizing.multi_node)
        held = wake.held_requests(body.get("status"), now)
        if held > 0 and current == 0:  # waking from zero: no engine to read, and no time to lose
            collected = Collected(Observation(
                time_s=now, metrics_available=False, reason_unavailable="no engine is running (waking from zero)",
                current_replicas=current, ready_replicas=ready, held_requests=held), reason_code=NO_SERIES)
        else:
            collected = await context.io(
                lambda: self.collector.collect(model.served_model_name, ref[0], time_s=now,
                                               current_replicas=current, ready_replicas=ready,
                                               ttft_percentiles=ttft_percentiles(configs))
            )
            collected = replace(collected, observation=replace(collected.observation, held_requests=held))
        memory = self.memory.get(ref)
        state = memory.state if memory else seed_state(now, current)
        learning_memory, learned = learn_engine(
            memory.learning if memory else None, profile, collected,
            observe.from_index(indexes.get(observe.PODS_INDEX), ref), now, drift.engine_revision(body.get("spec") or {}),
            self.settings.window_s, max_num_batched_tokens(model))
        drift_memory, outcome = None, drift.DriftOutcome(None, None)
        drift_config = self._drift_config(model, ref)
        if drift_config is not None:
            drift_memory = drift.note_revision((memory.drift if memory else None) or drift.DriftMemory(),
                                               drift.engine_revision(body.get("spec") or {}))
            if now >= drift_memory.next_window_s:
                drift_memory, outcome = await self._drift_window(context, model, ref, drift_memory, drift_config,
                                                                 now, collected.observation)
                if outcome.new_refit is not None:
                    state = drift.reset_policy_state(state)
                learning_memory = learning_after_drift(learning_memory, outcome)
            collected = replace(collected, observation=drift.observation_with_refit(collected.observation,
                                                                                    drift_memory.refit))
        configs = with_learned_startup(configs, learned)
        decision, state = decide_strictest(collected.observation, configs, state, learned.profile,
                                           collected.ttft_slo_s)
        capacities = fit_capacities(profile, learned.profile, collected.observation, configs)
        learning_memory, refit_message = learning.capacity_moved(learning_memory, *capacities, fit=learned.fit)
        self.memory[ref] = _Memory(state, now, drift_memory, learning_memory)
        result = PassResult(decision=decision, collected=collected, drift=outcome.assessment, learned=learned)
        if refit_message is not None:
            log.info(kv("Engine fit moved capacity", name=ref[1], namespace=ref[0], detail=refit_message))
            await context.io(context.writer.post_event, body, "Normal", ENGINE_REFIT_EVENT, refit_message)

        key = ModelKey(ref[0], ref[1], model.served_model_name)
        if decision.replicas != current:
            if await self._scale(context, body, ref, current, decision):
                result.scaled_from, result.scaled_to = current, decision.replicas
                context.metrics.count_scale_event(key, "up" if decision.replicas > current else "down")
        elif not decision.metrics_ok:
            log.debug(kv("Held replicas: metrics unavailable", name=ref[1], namespace=ref[0],
                         replicas=current, reason=decision.reason))

        last_scale = (rfc3339(state.last_scale_time_s) if state.last_scale_time_s is not None
                      else ((body.get("status") or {}).get("scaling") or {}).get("lastScaleTime"))
        await self._write_status(context, body, ref, decision, collected, last_scale, model, drift_memory, outcome,
                                 engine=engine_status(learned, capacities))
        record_metrics(context.metrics, key, decision, collected)
        record_engine_metrics(context.metrics, key, learned, capacities)
        if outcome.assessment is not None:
            for attribute, value, labels in drift.drift_metric_values(outcome.assessment):
                context.metrics.set_model_gauge(attribute, key, value, **labels)
        return result

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

    async def _drift_window(self, context: Any, model: FoundationModel, ref: ModelRef, memory: drift.DriftMemory,
                            config: DriftConfig, now: float, observation: Any
                            ) -> tuple[drift.DriftMemory, drift.DriftOutcome]:
        """Read one drift window from Prometheus and feed it to the detector."""
        range_s = drift.window_range_s(memory, now, config)
        series: DriftSeries = await context.io(
            lambda: self.collector.collect_drift(model.served_model_name, ref[0], time_s=now, window_s=range_s)
        )
        if series.reason_code is not None:  # the next pass tries again; the range then covers the gap
            log.warning(kv("Skipped drift window", name=ref[1], namespace=ref[0], reason=series.reason_code,
                           detail=series.message))
            return memory, drift.DriftOutcome(None, None)
        used = drift.observation_with_refit(observation, memory.refit)
        try:
            memory, outcome = drift.drift_step(
                memory, series.buckets, series.sums, now_s=now, range_s=range_s, config=config,
                before=(used.mean_prompt_tokens, used.mean_output_tokens), token_window_s=self.settings.tokens_window_s,
            )
        except ValueError as exc:  # histograms Prometheus answered that do not fit together: skip the window
            log.warning(kv("Skipped drift window", name=ref[1], namespace=ref[0], reason="InvalidHistogram",
                           detail=str(exc)))
            return replace(memory, next_window_s=now + config.window_s), drift.DriftOutcome(None, None)
        if outcome.assessment is not None:  # once per drift window
            log.info(kv("Assessed drift", name=ref[1], namespace=ref[0], reason=outcome.assessment.reason,
                        detail=outcome.assessment.message))
        if outcome.new_refit is not None:
            log.info(kv("Re-fitted capacity model", name=ref[1], namespace=ref[0],
                        prompt_tokens=round(outcome.new_refit.prompt_after),
                        output_tokens=round(outcome.new_refit.output_after),
                        until=rfc3339(outcome.new_refit.until_s)))
        return memory, outcome

    async def _scale(self, context: Any, body: Mapping[str, Any], ref: ModelRef, current: int,
                     decision: Decision) -> bool:
        namespace, name = ref
        try:
            await context.io(context.writer.scale_foundation_model, namespace, name, decision.replicas,
                             self.settings.field_manager)
        except ApiException as exc:
            log.warning(kv("Failed to scale FoundationModel", name=name, namespace=namespace,
                           to=decision.replicas, status=exc.status, reason=exc.reason))
            return False
        log.info(kv("Scaled FoundationModel", name=name, namespace=namespace, from_replicas=current,
                    to_replicas=decision.replicas, reason=decision.reason))
        await context.io(context.writer.post_event, body, "Normal", "Scaled",
                         scale_message(current, decision.replicas, decision))
        return True

    async def _write_status(self, context: Any, body: Mapping[str, Any], ref: ModelRef, decision: Decision,
                            collected: Collected, last_scale: str | None, model: FoundationModel,
                            drift_memory: drift.DriftMemory | None = None,
                            outcome: drift.DriftOutcome | None = None, engine: Mapping[str, Any] | None = None) -> None:
        namespace, name = ref
        current_status = body.get("status") or {}
        existing = current_status.get("conditions") or []
        generation = int(model.metadata.generation or 0)
        own = autoscaler_conditions(decision, collected, generation)
        drift_patch, drift_own = drift_status_patch(current_status, drift_memory, generation)
        conditions = merge_own_conditions(existing, own + drift_own, rfc3339(self.clock()))
        if drift_memory is None:  # drift is off: its condition goes
            conditions = [c for c in conditions if c.get("type") not in DRIFT_CONDITIONS]
        patch = {"scaling": scaling_status(decision, collected, last_scale, engine), "conditions": conditions,
                 **drift_patch}
        stored_scaling = {k: v for k, v in patch["scaling"].items() if v is not None}  # null deletes a key
        if current_status.get("scaling") == stored_scaling and existing == conditions and not drift_patch:
            return
        try:
            await context.io(context.writer.patch_status, namespace, name, patch)
        except ApiException as exc:
            log.warning(kv("Failed to update scaling status", name=name, namespace=namespace,
                           status=exc.status, reason=exc.reason))
            return
        events = transition_events(existing, own)
        if drift_own:
            previous = next((c for c in existing if c.get("type") == drift.DRIFT_DETECTED), None)
            events += drift.drift_events(previous, drift_own[0], outcome.new_refit if outcome else None)
        for event_type, reason, message in events:
            await context.io(context.writer.post_event, body, event_type, reason, message)

    async def _clear_status(self, context: Any, body: Mapping[str, Any]) -> None:
        """Autoscaling switched off: drop status.scaling and our conditions, once."""
        status = body.get("status") or {}
        existing = status.get("conditions") or []
        kept = [dict(c) for c in existing if c.get("type") not in OWN_CONDITIONS + DRIFT_CONDITIONS]
        if status.get("scaling") is None and status.get("drift") is None and len(kept) == len(existing):
            return
        metadata = body["metadata"]
        try:
            await context.io(context.writer.patch_status, metadata["namespace"], metadata["name"],
                             {"scaling": None, "drift": None, "conditions": kept})
        except ApiException as exc:
            log.warning(kv("Failed to clear scaling status", name=metadata["name"],
                           namespace=metadata["namespace"], status=exc.status))

