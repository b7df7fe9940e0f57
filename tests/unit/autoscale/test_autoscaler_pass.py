"""Autoscaler.run_pass with a fake API and a fake Prometheus: one batched collection for every
model, failures said out loud, memory by UID, capacity maths in a worker process."""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes.client.exceptions import ApiException

from kiban.autoscale.collector import Collector, Sample
from kiban.autoscale.model_pass import (
    ACTIVE,
    NO_ENGINE_PROFILE,
    SCALING_ACTIVE,
    SCALING_FAILED,
    AutoscaleSettings,
    Autoscaler,
    DecideJob,
    Decider,
    _Memory,
    decide_all,
    seed_state,
)
from kiban.autoscale.policy import Observation
from kiban.config import AcceleratorProfile, OperatorConfig
from kiban.metrics import OperatorMetrics
from kiban.reconcile import observe


def body(name: str, uid: str, replicas: int = 2, profile: str = "nvidia-l4", **scaling) -> dict:
    return {
        "apiVersion": "kiban.dev/v1alpha1", "kind": "FoundationModel",
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": 1},
        "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "parameters": "8B"},
                 "accelerator": {"profile": profile},
                 "scaling": {"minReplicas": 1, "maxReplicas": 8, "replicas": replicas, "slo": {"ttftP95Ms": 500},
                             "stabilizationWindowSeconds": 0, **scaling}},
        "status": {},
    }


class Prometheus:
    """Answers every batched query with a value per model (by the metric it reads); counts queries."""

    def __init__(self, rates: dict[str, float]):
        self.rates, self.asked = rates, []

    def query(self, promql, time_s):
        self.asked.append(promql)
        out = []
        for name, rate in self.rates.items():
            labels = {"namespace": "ns", "model_name": name}
            if "_bucket" in promql and "histogram_quantile" not in promql:
                out += [Sample({**labels, "le": "512"}, rate * 60), Sample({**labels, "le": "+Inf"}, rate * 60)]
                continue
            value = {"count": 1.0, "request_success_total": rate, "delta(": 0.0, "request_prompt_tokens_sum": 256.0,
                     "request_generation_tokens_sum": 16.0, "histogram_quantile": 0.3}
            picked = next((v for k, v in value.items() if k in promql), 1.0)
            if "delta(" in promql:
                picked = 0.0
            elif "histogram_quantile" in promql:
                picked = 0.3
            out.append(Sample(labels, picked))
        return out


class Writer:
    def __init__(self, refuse_scale: bool = False):
        self.scales, self.applies, self.refuse_scale = [], [], refuse_scale

    def scale_foundation_model(self, namespace, name, replicas, manager):
        if self.refuse_scale:
            exc = ApiException(status=422, reason="Unprocessable Entity")
            exc.body = json.dumps({"message": "denied request: replicas are frozen"})
            raise exc
        self.scales.append((name, replicas, manager))

    def apply_status(self, namespace, name, status, manager):
        self.applies.append((name, manager, status))


class Context:
    def __init__(self, writer: Writer, profiles=()):
        config = OperatorConfig()
        self.config = config.model_copy(update={"accelerator_profiles": {**config.accelerator_profiles,
                                                                         **{p.name: p for p in profiles}}})
        self.writer, self.metrics, self.events = writer, OperatorMetrics(), []

    async def io(self, fn, *args, priority=None):
        return fn(*args)

    def post_event_later(self, fm, event_type, reason, message):
        self.events.append((fm["metadata"]["name"], event_type, reason, message))


def indexes(*bodies: dict) -> dict:
    return {observe.MODELS_INDEX: {("ns", b["metadata"]["name"]): [b] for b in bodies}}


def autoscaler(prometheus) -> Autoscaler:
    settings = AutoscaleSettings("http://p", interval_s=15)
    clock = iter(range(1_000_000, 2_000_000, 15)).__next__
    return Autoscaler(collector=Collector(prometheus, settings.window_s), settings=settings, clock=lambda: clock())


def test_one_query_per_signal_for_the_whole_fleet():
    few, many = Prometheus({"m0": 1.0}), Prometheus({f"m{i}": 1.0 for i in range(40)})
    asyncio.run(autoscaler(few).run_pass(Context(Writer()), indexes(body("m0", "u0"))))
    summary = asyncio.run(autoscaler(many).run_pass(
        Context(Writer()), indexes(*(body(f"m{i}", f"u{i}") for i in range(40)))))
    assert summary.decided == 40
    # the same queries for 1 model or 40: fewer than 20 for the signals, plus one per vLLM counter
    # the online engine fit reads (kiban.autoscale.engine_counters, one query each, batched alike)
    from kiban.autoscale.engine_counters import COUNTERS

    assert len(many.asked) == len(few.asked) < 20 + len(COUNTERS)


def test_a_refused_scale_is_scaling_failed_with_the_servers_words_and_the_state_is_not_advanced():
    prometheus = Prometheus({"m0": 30.0})  # far more than 2 replicas sustain
    scaler, writer = autoscaler(prometheus), Writer(refuse_scale=True)
    context = Context(writer)
    model = body("m0", "u0", replicas=2)
    before = seed_state(0.0, 2)
    scaler.memory["u0"] = _Memory(before, 0.0)
    summary = asyncio.run(scaler.run_pass(context, indexes(model)))
    result = summary.results[("ns", "m0")]
    assert result.error and "replicas are frozen" in result.error and result.scaled_to is None
    assert scaler.memory["u0"].state == before  # the scale did not happen: nothing remembered as done
    (name, manager, status), = writer.applies
    active = next(c for c in status["conditions"] if c["type"] == SCALING_ACTIVE)
    assert (active["status"], active["reason"]) == ("False", SCALING_FAILED)
    assert "from 2 to" in active["message"] and "422 Unprocessable Entity: denied request" in active["message"]
    assert "lastScaleTime" not in status.get("scaling", {})
    assert ("m0", "Warning", SCALING_FAILED, active["message"]) in context.events


def test_memory_is_by_uid_so_a_model_recreated_under_its_name_starts_afresh():
    prometheus = Prometheus({"m0": 1.0})
    scaler, context = autoscaler(prometheus), Context(Writer())
    asyncio.run(scaler.run_pass(context, indexes(body("m0", "old-uid"))))
    assert set(scaler.memory) == {"old-uid"}
    asyncio.run(scaler.run_pass(context, indexes(body("m0", "new-uid"))))
    assert set(scaler.memory) == {"new-uid"}  # the deleted one's memory went with it
    scaler.forget("new-uid")
    assert scaler.memory == {} and not any(k[0] == "new-uid" for k in scaler.applied)


def test_an_accelerator_profile_without_an_engine_profile_is_held_out_loud():
    l40s = AcceleratorProfile(name="nvidia-l40s", node_selector={"gpu": "l40s"}, resource_name="nvidia.com/gpu",
                              gpu_memory_gib=48, gpus_per_node=8)
    writer = Writer()
    context = Context(writer, profiles=[l40s])
    summary = asyncio.run(autoscaler(Prometheus({})).run_pass(context, indexes(body("m0", "u0", profile="nvidia-l40s"))))
    assert "'nvidia-l40s' has no engine profile" in summary.results[("ns", "m0")].skipped
    (name, manager, status), = writer.applies
    (active,) = status["conditions"]
    assert (active["type"], active["status"], active["reason"]) == (SCALING_ACTIVE, "False", NO_ENGINE_PROFILE)
    assert "replicas stay at 2" in active["message"] and not writer.scales
    assert context.events and context.events[0][1:3] == ("Warning", NO_ENGINE_PROFILE)


def test_switching_autoscaling_off_removes_the_autoscalers_fields_with_an_empty_apply():
    writer = Writer()
    model = body("m0", "u0", autoscaling=False)
    model["status"] = {"scaling": {"desiredReplicas": 2},
                       "conditions": [{"type": "MetricsAvailable", "status": "True", "reason": "MetricsCollected",
                                       "message": "", "lastTransitionTime": "T"},
                                      {"type": "Ready", "status": "True", "reason": "ReplicasReady", "message": "",
                                       "lastTransitionTime": "T"}]}
    asyncio.run(autoscaler(Prometheus({})).run_pass(Context(writer), indexes(model)))
    assert writer.applies == [("m0", "kiban-autoscaler", {})]


def test_a_healthy_pass_says_scaling_is_active():
    writer = Writer()
    asyncio.run(autoscaler(Prometheus({"m0": 1.0})).run_pass(Context(writer), indexes(body("m0", "u0"))))
    (_, manager, status), = writer.applies
    assert manager == "kiban-autoscaler" and set(status) == {"scaling", "conditions"}
    types = {c["type"]: c for c in status["conditions"]}
    assert set(types) == {"MetricsAvailable", "ScalingLimited", SCALING_ACTIVE}
    assert types[SCALING_ACTIVE]["reason"] == ACTIVE


def test_the_capacity_maths_gives_the_same_answers_in_a_worker_process():
    from kiban.autoscale.model_pass import engine_profile_for, scaling_configs
    from kiban.api.v1alpha1 import FoundationModel

    fm = FoundationModel.from_object(body("m0", "u0"))
    configs, profile = scaling_configs(fm, 1), engine_profile_for(fm)
    jobs = [DecideJob(Observation(time_s=100.0 + i, metrics_available=True, arrival_rate_rps=1.0 + i,
                                  mean_prompt_tokens=256.0, mean_output_tokens=16.0, running=1.0, waiting=0.0,
                                  current_replicas=2), configs, seed_state(0.0, 2), profile, {}) for i in range(3)]
    decider = Decider(1)
    try:
        remote = asyncio.run(decider.run(jobs))
    finally:
        decider.shutdown()
    assert [d.replicas for d, _ in remote] == [d.replicas for d, _ in decide_all(jobs)]
    assert [d.reason for d, _ in remote] == [d.reason for d, _ in decide_all(jobs)]


def test_the_capacity_worker_loads_no_kubernetes_client_kopf_pydantic_or_prometheus_client():
    """What crosses to the worker process (the function and a job, pickled by reference) names
    only modules whose imports stay light: the worker then holds no copy of the API client
    (about 40 MB of RSS per worker)."""
    import pickle
    import pickletools
    import subprocess
    import sys

    from kiban.api.v1alpha1 import FoundationModel
    from kiban.autoscale.model_pass import decide_all_counted, engine_profile_for, scaling_configs

    fm = FoundationModel.from_object(body("m0", "u0"))
    job = DecideJob(Observation(time_s=1.0, metrics_available=True, arrival_rate_rps=1.0, current_replicas=2),
                    scaling_configs(fm, 1), seed_state(0.0, 2), engine_profile_for(fm), {95: 0.3},
                    prior=engine_profile_for(fm))
    named = set()
    for payload in (decide_all_counted, job):
        ops = list(pickletools.genops(pickle.dumps(payload)))
        strings = [arg for op, arg, _ in ops if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE")]
        named |= {arg.split(" ")[0] for op, arg, _ in ops if op.name == "GLOBAL"}
        named |= {s for s in strings if s.startswith("kiban.")}  # STACK_GLOBAL's module operand
    kiban_modules = {m for m in named if m.startswith("kiban.")}
    assert kiban_modules and kiban_modules <= {"kiban.autoscale.deciding", "kiban.autoscale.policy",
                                               "kiban.capacity.engine_profile", "kiban.capacity.batching"}
    script = ("import sys\n" + "".join(f"import {m}\n" for m in sorted(kiban_modules)) +
              "print(sorted(m for m in ('kubernetes', 'kopf', 'pydantic', 'prometheus_client', 'aiohttp') "
              "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("bad", [float("nan"), 1e14, -3.0])
def test_a_job_that_cannot_be_decided_costs_only_itself(bad):
    from kiban.autoscale.model_pass import engine_profile_for, scaling_configs
    from kiban.api.v1alpha1 import FoundationModel

    fm = FoundationModel.from_object(body("m0", "u0"))
    good = DecideJob(Observation(time_s=1.0, metrics_available=True, arrival_rate_rps=1.0, mean_prompt_tokens=256.0,
                                 mean_output_tokens=16.0, current_replicas=2),
                     scaling_configs(fm, 1), seed_state(0.0, 2), engine_profile_for(fm), {})
    broken = DecideJob(Observation(time_s=1.0, metrics_available=True, arrival_rate_rps=bad, current_replicas=-1),
                       good.configs, good.state, good.profile, {})
    first, second = decide_all([broken, good])
    assert isinstance(first, str) and "current_replicas" in first
    assert second[0].replicas >= 1


def test_when_the_solve_budget_is_spent_new_models_wait_a_pass_and_known_ones_are_still_decided():
    from dataclasses import replace as _replace

    from kiban.api.v1alpha1 import FoundationModel
    from kiban.autoscale.model_pass import DEFERRED, engine_profile_for, scaling_configs

    fm = FoundationModel.from_object(body("m0", "u0"))
    configs, profile = scaling_configs(fm, 1), engine_profile_for(fm)
    obs = Observation(time_s=100.0, metrics_available=True, arrival_rate_rps=1.0, mean_prompt_tokens=256.0,
                      mean_output_tokens=16.0, running=1.0, waiting=0.0, current_replicas=2)
    (_, warm_state), = decide_all([DecideJob(obs, configs, seed_state(0.0, 2), profile, {})])
    assert warm_state.capacity_inputs is not None
    cold = DecideJob(_replace(obs, arrival_rate_rps=1.5), configs, seed_state(0.0, 2), profile, {})
    warm = DecideJob(_replace(obs, time_s=115.0), configs, warm_state, profile, {})
    first, second = decide_all([cold, warm], budget_s=0.0)
    assert first == DEFERRED and second[0].replicas >= 1  # the known model is decided, in its place
    assert decide_all([cold], budget_s=None)[0][0].replicas >= 1


def held_at_zero(name: str, uid: str, now_s: float, requests: int = 3) -> dict:
    """A model at zero replicas for which a gateway pod holds requests (status.gateway.held)."""
    from datetime import datetime, timezone

    model = body(name, uid, replicas=0, minReplicas=0)
    beat = datetime.fromtimestamp(now_s, timezone.utc).isoformat().replace("+00:00", "Z")
    model["status"] = {"gateway": {"held": {"gw-0": {"requests": requests, "since": beat, "heartbeat": beat}}}}
    return model


def test_a_model_held_at_zero_is_queued_for_a_wake_and_the_task_is_woken_at_once():
    scaler = autoscaler(Prometheus({}))
    scaler.clock = lambda: 1_000_000.0
    waking, awake = held_at_zero("m0", "u0", 1_000_000.0), body("m1", "u1", replicas=1, minReplicas=0)

    class Leading:
        leading = True

    class Following:
        leading = False

    async def scenario():
        assert not scaler.notice(Following(), waking)  # only the leader runs passes
        assert not scaler.notice(Leading(), awake)  # a replica is already asked for: no wake
        waiter = asyncio.ensure_future(scaler.wait_for_wake(60.0))
        await asyncio.sleep(0)
        assert scaler.notice(Leading(), waking) and not scaler.notice(Leading(), waking)  # once until taken
        return await asyncio.wait_for(waiter, 5.0)  # woken long before the 60 s tick

    assert asyncio.run(scenario()) == {("ns", "m0")}
    assert asyncio.run(scaler.wait_for_wake(0.0)) == set()  # taken off the queue


def test_a_wake_pass_decides_only_the_woken_model_and_asks_prometheus_nothing():
    prometheus = Prometheus({"m1": 5.0})
    scaler, writer = autoscaler(prometheus), Writer()
    scaler.clock = lambda: 1_000_000.0
    waking, other = held_at_zero("m0", "u0", 1_000_000.0), body("m1", "u1", replicas=1)
    summary = asyncio.run(scaler.run_pass(Context(writer), indexes(waking, other), only={("ns", "m0")}))
    assert prometheus.asked == []  # at zero nothing is scraped: the held requests are the signal
    assert set(summary.results) == {("ns", "m0")}
    assert writer.scales == [("m0", 1, "kiban-autoscaler")]
    assert "wake from zero" in summary.results[("ns", "m0")].decision.reason


def test_the_applied_status_has_no_null_at_any_depth_not_even_in_the_engine_fit():
    """status.scaling.engine without traffic has no capacities yet; the CRD types them as
    numbers, so an applied null there made the API server refuse the autoscaler's whole apply."""
    from kiban.autoscale import learning
    from kiban.autoscale.collector import Collected
    from kiban.autoscale.model_pass import applied_status, engine_status, scaling_status
    from kiban.autoscale.policy import Decision
    from kiban.api.v1alpha1 import FoundationModel
    from kiban.autoscale.model_pass import engine_profile_for

    profile = engine_profile_for(FoundationModel.from_object(body("m0", "u0")))
    _, learned = learning.learn(learning.LearningMemory(), profile, (), (), 100.0)
    engine = engine_status(learned, (None, None))
    obs = Observation(time_s=100.0, metrics_available=False, current_replicas=2)
    decision = Decision(2, "metrics unavailable: kept 2 replicas", None, None, None, None, metrics_ok=False)
    applied = applied_status({"scaling": scaling_status(decision, Collected(obs), None, engine)}, [])

    def nulls(value, path="status"):
        if value is None:
            return [path]
        if isinstance(value, dict):
            return [n for k, v in value.items() for n in nulls(v, f"{path}.{k}")]
        if isinstance(value, list):
            return [n for i, v in enumerate(value) for n in nulls(v, f"{path}[{i}]")]
        return []

    assert "engine" in applied["scaling"] and "alphaMs" in applied["scaling"]["engine"]
    assert nulls(applied) == []


@pytest.mark.parametrize("interval_s", [1.0, 15.0, 600.0])
def test_any_valid_interval_builds_an_autoscaler(interval_s):
    """A long interval (600 s, as tests and quiet clusters set) once made the breaker's cooldown
    longer than its maximum: the operator did not start."""
    scaler = Autoscaler.from_settings(AutoscaleSettings("http://127.0.0.1:9", interval_s=interval_s))
    try:
        breaker = scaler.collector.prometheus.breaker
        assert breaker.cooldown_s >= interval_s or breaker.cooldown_s == 5.0
        assert breaker.max_cooldown_s >= breaker.cooldown_s
    finally:
        scaler.shutdown()


class SlowContext(Context):
    """The API server as during a thousand models' creation: model m0's status writes wait in
    the I/O pool until `release` is set; every other model's land at once."""

    def __init__(self, writer: Writer):
        super().__init__(writer)
        self.release = asyncio.Event()

    async def io(self, fn, *args, priority=None):
        if args[:2] == ("ns", "m0") and fn == self.writer.apply_status:
            await self.release.wait()
        return fn(*args)


def test_a_slow_write_never_stalls_the_pass_and_its_model_sits_out_until_it_lands(monkeypatch):
    from kiban.autoscale import model_pass
    from kiban.autoscale.model_pass import WRITES_IN_FLIGHT

    monkeypatch.setattr(model_pass, "WRITE_WAIT_SHARE", 0.01)  # 0.15 s of the 15 s interval

    async def scenario():
        prometheus = Prometheus({"m0": 1.0, "m1": 1.0})
        scaler, writer = autoscaler(prometheus), Writer()
        context = SlowContext(writer)
        models = indexes(body("m0", "u0"), body("m1", "u1"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await scaler.run_pass(context, models)
        took = loop.time() - started
        assert first.decided == 2 and first.phases["writes_pending"] == 1
        assert took < 5.0  # returned although m0's write never landed (it would wait forever)
        assert [name for name, _, _ in writer.applies] == ["m1"]
        assert set(scaler.writing) == {"u0"}
        second = await scaler.run_pass(context, models)  # m0 sits out, m1 is decided
        assert second.results[("ns", "m0")].skipped == WRITES_IN_FLIGHT
        assert second.results[("ns", "m1")].decision is not None
        woken = await scaler.run_pass(context, models, only={("ns", "m0")})  # a wake pass must not drop it
        assert woken.results[("ns", "m0")].skipped == WRITES_IN_FLIGHT and not scaler.waking
        context.release.set()
        for _ in range(100):
            if not scaler.writing:
                break
            await asyncio.sleep(0.01)
        assert not scaler.writing and "m0" in [name for name, _, _ in writer.applies]
        assert scaler.waking == {("ns", "m0")}  # queued for a wake pass once its writes landed
        third = await scaler.run_pass(context, models)
        assert third.results[("ns", "m0")].decision is not None

    asyncio.run(scenario())
