"""Kiban in the benchmark, as the operator runs it: a FoundationModel, the collector, the policy.

Every tick KibanPolicy does what `kiban run` does for one model with the chart's defaults
(kiban.autoscale.model_pass): the collector (kiban.autoscale.collector.Collector, the batched
queries, the operator's default rate and token windows from AutoscaleSettings) asks the
benchmark's Prometheus stand-in, the answers become the Observation (prompt mix included), and
model_pass.decide_strictest decides under the configs model_pass.scaling_configs makes of the
model's spec. The engine profile is the datasheet one the operator ships
(model_pass.engine_profile_for); the step times are fitted from the engines' vLLM counters, read
through the same Prometheus stand-in (engine_window_queries below), and the look-ahead from when
the pods became Ready (kiban.autoscale.learning). Kiban never sees FleetObservation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from kiban.api.v1alpha1 import FoundationModel
from kiban.autoscale.collector import (
    Collected,
    Collector,
    PrometheusQuery,
    PrometheusUnavailable,
    Sample,
    Target,
    promql_duration,
    series_key,
)
from kiban.autoscale.learning import Learned, LearningMemory, learn
from kiban.autoscale.model_pass import (
    AutoscaleSettings,
    decide_strictest,
    engine_profile_for,
    scaling_configs,
    seed_state,
    ttft_percentiles,
)
from kiban.autoscale.policy import PolicyState
from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.fitting import EngineWindow, PodStart
from kiban.config import OperatorConfig

# What `kiban run` and the chart default to (kiban.config.OperatorConfig, AutoscaleSettings).
OPERATOR_DEFAULTS = OperatorConfig()
PARAMETERS_B = {"8B": "8B", "70B": "70B", "405B": "405B"}  # profile size suffix -> spec.model.parameters


def bench_model(profile_name: str, slo_ttft_ms: float, min_replicas: int, max_replicas: int,
                name: str = "bench", namespace: str = "bench") -> FoundationModel:
    """The FoundationModel a platform team would write for this cell: the accelerator profile and
    model size, autoscaling on, a TTFT p99 target, replica bounds; everything else defaulted."""
    gpu, _, size = profile_name.partition("/")
    body = {
        "apiVersion": "kiban.dev/v1alpha1", "kind": "FoundationModel",
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": {
            "model": {"uri": f"hf://bench/model-{size}", "parameters": PARAMETERS_B.get(size, size)},
            "accelerator": {"profile": gpu},
            "scaling": {"autoscaling": True, "minReplicas": min_replicas, "maxReplicas": max_replicas,
                        "slo": {"ttftP99Ms": int(round(slo_ttft_ms))}},
        },
    }
    return FoundationModel.from_object(body)


# -- the engine fit's inputs, read through Prometheus -----------------------------------------------
# Stand-in for the operator-side function issue 13's "learn" engineer is writing (mailbox
# learn--engine-windows-from-promql): per engine, the vLLM counters kiban.capacity.fitting's
# EngineWindow names, over one window. To be replaced by that function when it lands.

ENGINE_KEYS = ("namespace", "instance", "engine")


def engine_window_queries(window_s: float) -> dict[str, str]:
    """Per-engine PromQL (no aggregation) for EngineWindow's fields over `window_s`."""
    w = promql_duration(window_s)
    return {
        "mean_running": f"avg_over_time(vllm:num_requests_running[{w}])",
        "itl_sum_s": f"increase(vllm:inter_token_latency_seconds_sum[{w}])",
        "itl_count": f"increase(vllm:inter_token_latency_seconds_count[{w}])",
        "steps": f"increase(vllm:iteration_tokens_total_count[{w}])",
        "prompt_tokens": f"increase(vllm:prompt_tokens_total[{w}])",
        "prefill_sum_s": f"increase(vllm:request_prefill_time_seconds_sum[{w}])",
        "prefill_count": f"increase(vllm:request_prefill_time_seconds_count[{w}])",
        "request_prompt_sum": f"increase(vllm:request_prompt_tokens_sum[{w}])",
        "request_prompt_count": f"increase(vllm:request_prompt_tokens_count[{w}])",
    }


def engine_windows_from(answers: Mapping[str, Sequence[Sample]], model_name: str) -> tuple[EngineWindow, ...]:
    """One EngineWindow per engine of the model that has every field (finite, >= 0)."""
    per_engine: dict[tuple[str, ...], dict[str, float]] = {}
    for key, samples in answers.items():
        for sample in samples:
            if sample.labels.get("model_name") != model_name:
                continue
            engine = tuple(sample.labels.get(k, "") for k in ENGINE_KEYS)
            per_engine.setdefault(engine, {})[key] = sample.value
    windows = []
    for values in per_engine.values():
        if len(values) == len(answers) and all(math.isfinite(v) and v >= 0 for v in values.values()):
            windows.append(EngineWindow(**values))
    return tuple(windows)


@dataclass
class KibanPolicy:
    """Kiban with the operator's defaults on the model `bench_model` describes (see the module doc).

    `profile`: the datasheet prior. `cold_start_s` set fixes the look-ahead (the home game);
    None learns it from the pods. `learn=False` keeps the datasheet step times."""

    model: FoundationModel
    gpus_per_replica: int
    cold_start_s: float | None = None
    learn: bool = True
    interval_s: float = float(OPERATOR_DEFAULTS.autoscale_interval_seconds)
    fit_window_s: float = 60.0  # the engine fit reads non-overlapping windows of this length
    name: str = "kiban"
    observes: str = "operator"
    settings: AutoscaleSettings = field(init=False)
    profile: EngineProfile = field(init=False)
    state: PolicyState | None = field(init=False, default=None)
    memory: LearningMemory = field(init=False, default_factory=LearningMemory)
    learned: Learned | None = field(init=False, default=None)
    last_reason: str = field(init=False, default="")
    last_collected: Collected | None = field(init=False, default=None)
    _collector: Collector | None = field(init=False, default=None)
    _next_fit_s: float = field(init=False, default=-math.inf)

    def __post_init__(self) -> None:
        self.settings = AutoscaleSettings(prometheus_url="http://prometheus.bench",
                                          interval_s=self.interval_s)
        self.configs = scaling_configs(self.model, self.gpus_per_replica)
        self.profile = engine_profile_for(self.model)
        if self.cold_start_s is not None:
            self.configs = tuple(replace(c, startup_s=self.cold_start_s) for c in self.configs)
        self.target_key = series_key(self.model.metadata.namespace, self.model.served_model_name)

    def _collector_for(self, prometheus: PrometheusQuery) -> Collector:
        if self._collector is None or self._collector.prometheus is not prometheus:
            s = self.settings
            self._collector = Collector(prometheus, s.window_s, namespace_label=s.namespace_label,
                                        token_window_s=s.token_window_s)
        return self._collector

    def _engine_windows(self, prometheus: PrometheusQuery, now_s: float) -> tuple[EngineWindow, ...]:
        if now_s < self._next_fit_s:
            return ()
        self._next_fit_s = now_s + self.fit_window_s
        answers: dict[str, list[Sample]] = {}
        try:
            for key, promql in engine_window_queries(self.fit_window_s).items():
                answers[key] = prometheus.query(promql, now_s)
        except PrometheusUnavailable:
            return ()
        return engine_windows_from(answers, self.model.served_model_name)

    def desired_replicas(self, view) -> int:
        """One pass: collect, learn, decide; `view` is the fleet's OperatorView."""
        namespace, name = self.target_key
        target = Target(namespace, name, view.replicas, view.ready_replicas, ttft_percentiles(self.configs))
        collected = self._collector_for(view.prometheus).collect_all([target], time_s=view.now_s)[self.target_key]
        self.last_collected = collected
        profile, configs = self.profile, self.configs
        if self.learn:
            pods = [PodStart("bench", created, ready) for created, ready in view.pods]
            windows = self._engine_windows(view.prometheus, view.now_s)
            self.memory, self.learned = learn(self.memory, self.profile, windows, pods, view.now_s)
            profile = self.learned.profile
            if self.cold_start_s is None:
                configs = tuple(replace(c, startup_s=self.learned.startup.value_s) for c in configs)
        state = self.state if self.state is not None else seed_state(view.now_s, view.replicas)
        decision, self.state = decide_strictest(collected.observation, configs, state, profile, collected.ttft_slo_s)
        self.last_reason = decision.reason
        return decision.replicas
