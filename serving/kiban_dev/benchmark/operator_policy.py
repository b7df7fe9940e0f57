"""Kiban in the benchmark, as the operator runs it: a FoundationModel, the collector, the policy.

Every tick KibanPolicy does for one model what one pass of `kiban run` does
(kiban.autoscale.model_pass.Autoscaler.run_pass), with the operator's own functions, in its
order, under the settings `kiban run` and the chart start with (AutoscaleSettings.from_config of a
default OperatorConfig and an empty environment: 15 s interval, 60 s rate window, 300 s token
window, the engine fit on):

  1. collect: model_pass.collector_for builds the operator's Collector (the batched queries of
     kiban.autoscale.collector, the per-engine counter queries of engine_counters included) on the
     benchmark's Prometheus stand-in (kiban_dev.benchmark.promql over the replicas' vLLM 0.33
     series scraped every 15 s, vllm_series.py); `collect_all` turns the answers into the
     Observation (prompt mix, TTFT at the SLO's percentile, engine windows);
  2. learn: model_pass.learn_engine with the datasheet profile (model_pass.engine_profile_for) as
     prior, the engine windows, and the pods as the operator's pod index projects them (creation
     and Ready lastTransitionTime in whole seconds, kiban.clock.rfc3339);
  3. decide: model_pass.with_learned_startup (the look-ahead learned from the pods, the profile's
     estimate before any became Ready), then model_pass.decide_strictest on the learned engine.

Kiban never sees FleetObservation, the true engine or the true cold start. Drift detection is off,
as spec.drift defaults; the circuit breaker has nothing to do (the stand-in always answers).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from kiban.api.v1alpha1 import FoundationModel
from kiban.autoscale.collector import Collected, Collector, PrometheusQuery, Target, series_key
from kiban.autoscale.learning import Learned, LearningMemory
from kiban.autoscale.model_pass import (
    AutoscaleSettings,
    collector_for,
    decide_strictest,
    engine_profile_for,
    learn_engine,
    max_num_batched_tokens,
    scaling_configs,
    seed_state,
    ttft_percentiles,
    with_learned_startup,
)
from kiban.autoscale.policy import PolicyState
from kiban.capacity.engine_profile import EngineProfile
from kiban.clock import rfc3339
from kiban.config import OperatorConfig
from kiban.drift.tracker import engine_revision

# What `kiban run` and the chart default to (kiban.config.OperatorConfig, AutoscaleSettings).
OPERATOR_DEFAULTS = OperatorConfig()


def bench_model(profile_name: str, slo_ttft_ms: float, min_replicas: int, max_replicas: int,
                name: str = "bench", namespace: str = "bench") -> FoundationModel:
    """The FoundationModel a platform team would write for this cell: the accelerator profile and
    model size, autoscaling on, a TTFT p99 target, replica bounds; everything else defaulted."""
    gpu, _, size = profile_name.partition("/")  # "nvidia-l4/8B": the size is spec.model.parameters
    body = {
        "apiVersion": "kiban.dev/v1alpha1", "kind": "FoundationModel",
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": {
            "model": {"uri": f"hf://bench/model-{size}", "parameters": size},
            "accelerator": {"profile": gpu},
            "scaling": {"autoscaling": True, "minReplicas": min_replicas, "maxReplicas": max_replicas,
                        "slo": {"ttftP99Ms": int(round(slo_ttft_ms))}},
        },
    }
    return FoundationModel.from_object(body)


POD_TEMPLATE_HASH = "bench"  # one revision: the benchmark never changes the engine


def operator_settings() -> AutoscaleSettings:
    """The autoscaler's settings as `kiban run` starts with them (no KIBAN_* overrides)."""
    return AutoscaleSettings.from_config(OPERATOR_DEFAULTS, environ={})


def pod_index_entries(pods: tuple[tuple[float, float | None], ...]) -> list[dict[str, Any]]:
    """(created, Ready or None) per pod as the operator's pod index projects a pod: metadata with
    creationTimestamp and the template hash label, the Ready condition's lastTransitionTime; the
    API server writes whole seconds (rfc3339), so the benchmark does too."""
    out = []
    for created, ready in pods:
        conditions = [] if ready is None else [{"type": "Ready", "status": "True",
                                                "lastTransitionTime": rfc3339(ready)}]
        out.append({"metadata": {"creationTimestamp": rfc3339(created),
                                 "labels": {"pod-template-hash": POD_TEMPLATE_HASH}},
                    "status": {"conditions": conditions}})
    return out


@dataclass
class KibanPolicy:
    """Kiban with the operator's defaults on the model `bench_model` describes (see the module doc).

    `cold_start_s` set fixes the look-ahead instead of learning it (the home game, where the
    fleet's cold start is no secret); the operator has no such setting."""

    model: FoundationModel
    gpus_per_replica: int
    cold_start_s: float | None = None
    name: str = "kiban"
    observes: str = "operator"
    settings: AutoscaleSettings = field(init=False)
    interval_s: float = field(init=False)
    profile: EngineProfile = field(init=False)
    state: PolicyState | None = field(init=False, default=None)
    memory: LearningMemory | None = field(init=False, default=None)
    learned: Learned | None = field(init=False, default=None)
    last_reason: str = field(init=False, default="")
    last_collected: Collected | None = field(init=False, default=None)
    _collector: Collector | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.settings = operator_settings()
        self.interval_s = self.settings.interval_s
        self.configs = scaling_configs(self.model, self.gpus_per_replica)
        self.profile = engine_profile_for(self.model)
        if self.cold_start_s is not None:
            self.configs = tuple(replace(c, startup_s=self.cold_start_s) for c in self.configs)
        self.target_key = series_key(self.model.metadata.namespace, self.model.served_model_name,
                                     self.settings.namespace_label)
        self.revision = engine_revision(self.model.model_dump(by_alias=True, mode="json", exclude_none=True)["spec"])
        self.budget = max_num_batched_tokens(self.model)

    def _collector_for(self, prometheus: PrometheusQuery) -> Collector:
        if self._collector is None or self._collector.prometheus is not prometheus:
            self._collector = collector_for(prometheus, self.settings)
        return self._collector

    def desired_replicas(self, view) -> int:
        """One pass: collect, learn, decide; `view` is the fleet's OperatorView."""
        now = view.now_s
        target = Target(self.model.metadata.namespace, self.model.served_model_name, view.replicas,
                        view.ready_replicas, ttft_percentiles(self.configs))
        collected = self._collector_for(view.prometheus).collect_all([target], time_s=now)[self.target_key]
        self.last_collected = collected
        self.memory, self.learned = learn_engine(self.memory, self.profile, collected, pod_index_entries(view.pods),
                                                 now, self.revision, self.settings.window_s, self.budget,
                                                 fit=self.settings.engine_fit)
        configs = with_learned_startup(self.configs, self.learned)
        state = self.state if self.state is not None else seed_state(now, view.replicas)
        decision, self.state = decide_strictest(collected.observation, configs, state, self.learned.profile,
                                                collected.ttft_slo_s)
        self.last_reason = decision.reason
        return decision.replicas
