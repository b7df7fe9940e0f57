"""The autoscaler's pass (kiban.autoscale.model_pass.Autoscaler.run_pass) learning its engine and
staying stable, driven by a simulated engine.

A kiban_serving.sim.engine replays a load in simulated time and is scraped every 15 s as vLLM
0.33 exports it (kiban_dev.benchmark.engine_fit.replay). The Prometheus stand-in answers each of
the collector's own queries (Collector.queries: it knows which signal a PromQL text asks for)
with what Prometheus would return from those scrapes over the rate window: counter increases,
gauges at the evaluation time, histogram buckets; it evaluates no PromQL itself. The rest is
the operator's code: collector answers → Observation and EngineWindows, the fit, the policy,
status.scaling, Events, metrics. The real-Prometheus version of this runs in
tests/integration/test_engine_fit_operator.py.
"""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from kiban.autoscale.collector import Collector, Sample, Target
from kiban.autoscale.model_pass import ENGINE_REFIT_EVENT, AutoscaleSettings, Autoscaler
from kiban.capacity.profiles import get_profile_by_name
from kiban.config import load_config
from kiban.metrics import OperatorMetrics
from kiban.reconcile import observe
from kiban_dev.benchmark import engine_fit
from kiban_serving.sim.metrics import TTFT_BUCKETS
from kiban_serving.sim.true_engine import perturbed_profile

NAMESPACE, NAME = "ns", "chat"
INTERVAL_S, WINDOW_S = 15.0, 60.0
LABELS = {"namespace": NAMESPACE, "model_name": NAME, "instance": "10.0.0.7:8000", "engine": "0"}


class ScrapedPrometheus:
    """Answers the collector's queries from one engine's scrapes (see the module docstring)."""

    def __init__(self, scrapes: list[engine_fit.Scrape], collector: Collector, target: Target) -> None:
        self.scrapes = [engine_fit.Scrape(0.0, engine_fit.Counters(), 0, 0), *scrapes]  # before any traffic
        self.keys = {promql: key for key, promql in collector.queries([target]).items()}

    def _at(self, time_s: float) -> engine_fit.Scrape:
        return max((s for s in self.scrapes if s.time_s <= time_s + 1e-9), key=lambda s: s.time_s)

    def query(self, promql: str, time_s: float) -> list[Sample]:
        key = self.keys[promql]
        now, before = self._at(time_s), self._at(max(0.0, time_s - WINDOW_S))
        a, b = now.counters, before.counters
        span = max(1e-9, now.time_s - before.time_s)
        finished = a.prefill_count - b.prefill_count
        model = {"namespace": NAMESPACE, "model_name": NAME}

        def one(value: float, labels: dict[str, str] = model) -> list[Sample]:
            return [Sample(labels, value)]

        if key == "engines":
            return one(1.0)
        if key == "completion_rate":
            return one(finished / span)
        if key == "in_engine_growth":
            return one(float(now.running + now.waiting - before.running - before.waiting))
        if key == "mean_prompt_tokens":
            return one((a.request_prompt_sum - b.request_prompt_sum) / finished if finished else math.nan)
        if key == "mean_output_tokens":
            return one((a.request_output_sum - b.request_output_sum) / finished if finished else math.nan)
        if key in ("running", "waiting"):
            return one(float(now.running if key == "running" else now.waiting))
        if key.startswith("ttft_p"):
            ttfts = np.asarray(a.ttfts[len(b.ttfts):])
            if not len(ttfts):
                return one(math.nan)
            from kiban.capacity.fitting import HistogramWindow, histogram_quantile

            buckets = tuple((le, float((ttfts <= le).sum())) for le in (*TTFT_BUCKETS, math.inf))
            window = HistogramWindow(buckets, float(ttfts.sum()), float(len(ttfts)))
            return one(histogram_quantile(window, float(key.removeprefix("ttft_p")) / 100.0))
        if key == "prompt_buckets":
            prompts = np.asarray(a.prompts[len(b.prompts):])
            return [Sample({**model, "le": f"{float(le)}"}, float((prompts <= le).sum()))
                    for le in engine_fit.PROMPT_BUCKETS] + [Sample({**model, "le": "+Inf"}, float(len(prompts)))]
        if key.startswith("engine_"):
            window = engine_fit.windows_of([before, now])[0][1]
            scale = WINDOW_S / span  # increase() extrapolates to the whole window
            values = {"engine_itl_sum": window.itl_sum_s, "engine_itl_count": window.itl_count,
                      "engine_steps": window.steps, "engine_prompt_tokens": window.prompt_tokens,
                      "engine_first_tokens": window.first_tokens, "engine_prefill_sum": window.prefill_sum_s,
                      "engine_prefill_count": window.prefill_count, "engine_request_prompt_sum": window.request_prompt_sum,
                      "engine_request_prompt_count": window.request_prompt_count, "engine_queue_sum": window.queue_sum_s}
            return [Sample(LABELS, values[key] * scale)] if key in values else []
        return []  # kv_cache_usage, batch_by_engine, itl_by_engine: not exported here (optional)


class Writer:
    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []
        self.replicas: int | None = None

    def apply_status(self, namespace: str, name: str, status: dict, field_manager: str) -> None:
        # server-side apply as the autoscaler's field manager: what it applied is what it owns
        assert field_manager == "kiban-autoscaler", field_manager
        self.status = dict(status)

    def post_event_later(self, body: Any, event_type: str, reason: str, message: str) -> None:
        self.events.append((event_type, reason, message))

    def scale_foundation_model(self, namespace: str, name: str, replicas: int, field_manager: str) -> None:
        self.replicas = replicas


def model_body(ttft_ms: int, accelerator: str) -> dict:
    return {
        "apiVersion": "kiban.dev/v1alpha1", "kind": "FoundationModel",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "generation": 1, "uid": "u1"},
        "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "parameters": "8B"},
                 "accelerator": {"profile": accelerator},
                 "scaling": {"autoscaling": True, "minReplicas": 1, "maxReplicas": 8, "replicas": 1,
                             "slo": {"ttftP99Ms": ttft_ms}}},
    }


def run_passes(true_engine, requests: list[tuple[float, int, int]], seconds: float, ttft_ms: int = 2000,
               pods: list[dict] | None = None):
    """run_pass every 15 s over the replayed engine; (status.scaling per pass, the autoscaler, writer).
    The FoundationModel's accelerator is the true engine's GPU: its datasheet is the prior."""
    scrapes = engine_fit.replay(true_engine, requests, seconds)
    clock = {"now": 0.0}
    settings = AutoscaleSettings(prometheus_url="http://prometheus.invalid", interval_s=INTERVAL_S)
    target = Target(NAMESPACE, NAME, 1, 1, (99,))
    collector = Collector(None, settings.window_s, namespace_label=True)  # type: ignore[arg-type]
    collector.prometheus = ScrapedPrometheus(scrapes, collector, target)
    autoscaler = Autoscaler(collector=collector, settings=settings, clock=lambda: clock["now"])
    writer = Writer()

    async def io(fn, *args, **_):
        return fn(*args)

    context = SimpleNamespace(config=load_config({}), io=io, writer=writer, metrics=OperatorMetrics(),
                              post_event_later=writer.post_event_later)
    body = model_body(ttft_ms, true_engine.gpu)
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME, "namespace": NAMESPACE},
                  "status": {"readyReplicas": 1}}
    ref = (NAMESPACE, NAME)
    indexes = {observe.MODELS_INDEX: {ref: [body]}, observe.PODS_INDEX: {ref: pods or []},
               **{c.index_id: {ref: [deployment]} if c.plural == "deployments" else {} for c in observe.CHILD_RESOURCES}}
    history = []
    t = WINDOW_S
    while t <= seconds:
        clock["now"] = t
        result = asyncio.run(autoscaler.run_pass(context, indexes)).results[ref]
        memory = autoscaler.memory["u1"]  # by UID
        history.append((t, dict(writer.status.get("scaling") or {}), memory.state.last_capacity, result))
        t += INTERVAL_S
    return history, autoscaler, writer


def test_sparse_heavy_tailed_load_moves_capacity_at_most_2x_per_tick_and_barely_moves_the_fit() -> None:
    """About one request a minute with code-completion prompts (median 1.5k, p95 7k tokens) on an
    L4 at TTFT p99 <= 3 s, where a 7k prompt alone takes 1.9 s: a window holds zero to three
    requests, so the token means and the prompt mix, and the capacity solved from them, jump
    (without the rule below, by up to 3x per tick on this load). The pass keeps capacity per
    replica within 2x of the previous tick's unless the rate or a token mean it sized with moved
    by more; and the engine fit, fed windows of a handful of requests on an engine that is the
    datasheet, stays near the prior."""
    profile = get_profile_by_name("nvidia-l4/8B")
    pairs = engine_fit.trace_pairs("code", 1)
    rng = np.random.default_rng(3)
    requests, t = [], 0.0
    while t < 480.0:
        t += float(rng.exponential(1.0 / 0.02))
        requests.append((t, *pairs[int(rng.integers(len(pairs)))]))
    history, autoscaler, _ = run_passes(profile, requests, 480.0, ttft_ms=3000)
    moves = []
    for (_, _, before, _), (_, _, after, _) in zip(history, history[1:]):
        if before is None or after is None or before is after:
            continue
        allowed = max(2.0, *(max(x / y, y / x) for x, y in zip(after[1:], before[1:]) if x > 0 and y > 0))
        moved = max(after[0] / before[0], before[0] / after[0])
        assert moved <= allowed * (1 + 1e-9), (before, after)
        moves.append(moved)
    assert len(moves) >= 12  # most of the 29 ticks had traffic and a capacity
    learned = history[-1][3].learned
    for name in ("alpha_ms", "delta_ms"):
        assert abs(getattr(learned.fit.profile, name) / getattr(profile, name) - 1) < 0.15, name


def test_the_pass_learns_the_true_engine_and_shows_prior_fit_and_sd_in_status_with_an_event() -> None:
    """A true engine 40 % slower than the datasheet in every step-time parameter (the edge of the
    away game's range), loaded near the prior's capacity: status.scaling.engine carries prior, fitted
    value and sd per parameter and the capacities with each; alpha and delta end closer to the
    truth than the prior; the fit moved capacity per replica by more than 20 %, which an
    EngineRefit Event says; the pods' creation to Ready is the look-ahead."""
    from dataclasses import replace

    prior = get_profile_by_name("nvidia-a100-80gb/8B")
    true = replace(prior, **{name: getattr(prior, name) * 1.4 for name in ("alpha_ms", "beta_ms", "gamma_ms",
                                                                           "delta_ms")})
    pairs = engine_fit.trace_pairs("conv", 1)
    requests = engine_fit.workload(pairs, 3.0, 360.0, seed=7)
    pods = [observe.project_pod({"metadata": {"name": "p1", "creationTimestamp": "1970-01-01T00:00:00Z",
                                              "labels": {"pod-template-hash": "h1"}},
                                 "status": {"conditions": [{"type": "Ready", "status": "True",
                                                            "lastTransitionTime": "1970-01-01T00:02:10Z"}]}})]
    history, _, writer = run_passes(true, requests, 360.0, pods=pods)
    engine = history[-1][1]["engine"]
    for name in ("alphaMs", "betaMs", "gammaMs", "deltaMs"):
        assert set(engine[name]) == {"prior", "fitted", "sd"}, engine
        assert engine[name]["prior"] == pytest.approx(getattr(prior, name[:-2] + "_ms"))
    for name in ("alpha", "delta"):
        fitted, truth = engine[f"{name}Ms"]["fitted"], getattr(true, f"{name}_ms")
        assert abs(fitted / truth - 1) < 0.5 * abs(getattr(prior, f"{name}_ms") / truth - 1), engine
    assert engine["deltaMs"]["sd"] < 0.25 * engine["deltaMs"]["prior"]
    assert engine["coldStart"] == {"priorSeconds": prior.startup_s, "learnedSeconds": 130.0, "samples": 1}
    ratio = engine["capacityFittedRps"] / engine["capacityPriorRps"]
    assert ratio < 0.8, engine
    refits = [m for _, reason, m in writer.events if reason == ENGINE_REFIT_EVENT]
    assert len(refits) == 1 and "the engine fit moved capacity per replica -" in refits[0], writer.events
