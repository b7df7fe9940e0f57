"""The operator's side of the online engine fit (kiban.autoscale.learning, engine_counters and the
pure helpers of model_pass): pods as the pod index projects them, the per-engine PromQL and its
answers, evidence reset on a new revision or service-time drift, the >20 % capacity Event."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kiban.autoscale import learning
from kiban.autoscale.collector import Sample
from kiban.autoscale.engine_counters import COUNTERS, engine_queries, engine_windows
from kiban.autoscale.model_pass import learning_after_drift, max_num_batched_tokens
from kiban.capacity.fitting import EngineWindow, PodStart
from kiban.capacity.profiles import get_profile_by_name
from kiban.drift.tracker import DriftOutcome, Refit
from kiban.reconcile.observe import project_pod

PRIOR = get_profile_by_name("nvidia-a100-80gb/8B")
WINDOW = EngineWindow(mean_running=5.0, itl_sum_s=10.0, itl_count=800, steps=200, prompt_tokens=50_000,
                      prefill_sum_s=8.0, prefill_count=40, request_prompt_sum=50_000, request_prompt_count=40,
                      first_tokens=40, queue_sum_s=0.2, window_s=60.0)


def pod(name: str, created: str, ready: str | None, revision: str = "abc") -> dict:
    conditions = [{"type": "Ready", "status": "True" if ready else "False",
                   "lastTransitionTime": ready or created}]
    return project_pod({"metadata": {"name": name, "creationTimestamp": created,
                                     "labels": {"pod-template-hash": revision, "app": "x"}},
                        "spec": {"nodeName": "n"}, "status": {"phase": "Running", "conditions": conditions}})


def test_pods_from_the_pod_index_give_creation_to_ready_per_revision() -> None:
    pods = [pod("a", "2026-12-01T20:00:00Z", "2026-12-01T20:02:30Z"),
            pod("b", "2026-12-01T20:01:00Z", None),
            pod("c", "2026-12-01T19:00:00Z", "2026-12-01T19:01:00Z", revision="old")]
    starts = learning.pod_starts(pods)
    assert sorted(starts, key=lambda p: p.created_s)[0] == PodStart("old", starts[2].created_s, starts[2].created_s + 60)
    assert starts[0].ready_s - starts[0].created_s == 150.0
    assert starts[1].ready_s is None
    assert learning.newest_revision(starts) == "abc"
    memory, learned = learning.learn(learning.LearningMemory(), PRIOR, [], starts, starts[1].created_s + 200.0)
    assert learned.startup.revision == "abc"
    assert learned.startup.value_s == 200.0  # pod b has waited longer than pod a took: a censored start
    assert learned.startup.prior_s == PRIOR.startup_s


def test_a_pod_without_a_creation_time_is_left_out() -> None:
    assert learning.pod_starts([{"metadata": {"name": "x"}, "status": {}}]) == []


def test_engine_queries_ask_each_counters_increase_per_series() -> None:
    queries = engine_queries('namespace="ns"', "60s")
    assert set(queries) == set(COUNTERS)
    assert queries["engine_itl_sum"] == ('increase(vllm:inter_token_latency_seconds_sum{namespace="ns"}[60s]) or '
                                         'increase(vllm:time_per_output_token_seconds_sum{namespace="ns"}[60s])')
    assert queries["engine_steps"] == 'increase(vllm:iteration_tokens_total_count{namespace="ns"}[60s])'
    assert all("sum" not in q.split("(")[0] for q in queries.values())  # no aggregation: one answer per engine


def samples(values: dict[str, float], instance: str) -> dict[str, list[Sample]]:
    labels = {"namespace": "ns", "model_name": "m", "instance": instance, "engine": "0"}
    return {key: [Sample(labels, value)] for key, value in values.items()}


def test_answers_become_one_window_per_engine_with_cached_tokens_taken_off() -> None:
    base = {"engine_itl_sum": 10.0, "engine_itl_count": 800.0, "engine_steps": 200.0, "engine_prompt_tokens": 50_000.0,
            "engine_prompt_tokens_cached": 10_000.0, "engine_first_tokens": 40.0, "engine_prefill_sum": 8.0,
            "engine_prefill_count": 40.0, "engine_request_prompt_sum": 50_000.0, "engine_request_prompt_count": 40.0,
            "engine_request_computed_sum": 40_000.0, "engine_request_computed_count": 40.0, "engine_queue_sum": 0.2}
    a, b = samples(base, "10.0.0.1:8000"), samples({**base, "engine_itl_sum": 20.0}, "10.0.0.2:8000")
    answers = {key: a[key] + b[key] for key in base}
    windows = engine_windows(answers, 60.0)
    assert [w.itl_sum_s for w in windows] == [10.0, 20.0]
    assert windows[0].prompt_tokens == 40_000.0 and windows[0].request_prompt_sum == 40_000.0
    assert windows[0].window_s == 60.0 and windows[0].first_tokens == 40.0 and windows[0].queue_sum_s == 0.2


def test_an_engine_with_a_value_no_engine_produces_gives_no_window() -> None:
    base = {"engine_itl_sum": 10.0, "engine_itl_count": 800.0, "engine_steps": 200.0, "engine_prompt_tokens": 5.0}
    assert len(engine_windows(samples(base, "x"), 60.0)) == 1
    assert engine_windows(samples({**base, "engine_itl_sum": float("nan")}, "x"), 60.0) == ()
    assert engine_windows(samples({**base, "engine_steps": -3.0}, "x"), 60.0) == ()
    without_steps = {k: v for k, v in base.items() if k != "engine_steps"}
    assert engine_windows(samples(without_steps, "x"), 60.0) == ()  # a required counter missing


def test_a_new_engine_revision_starts_the_evidence_again() -> None:
    memory, learned = learning.learn(learning.LearningMemory(), PRIOR, [WINDOW], [], 60.0, revision="r1")
    assert memory.evidence.observations > 0
    again, _ = learning.learn(memory, PRIOR, [], [], 75.0, revision="r1")
    assert again.evidence.observations == pytest.approx(memory.evidence.observations, rel=0.01)
    fresh, refit = learning.learn(memory, PRIOR, [], [], 75.0, revision="r2")
    assert fresh.evidence.observations == 0
    assert refit.fit.profile.alpha_ms == pytest.approx(PRIOR.alpha_ms)


def test_service_time_drift_forgets_and_workload_drift_discounts_the_evidence() -> None:
    memory, _ = learning.learn(learning.LearningMemory(), PRIOR, [WINDOW], [], 60.0)

    class Assessment:
        service_time_drift, performance_regression = True, False

    forgot = learning_after_drift(memory, DriftOutcome(Assessment(), None))
    assert forgot.evidence.observations == 0
    refit = Refit(60.0, 1000.0, 100.0, 3000.0, 20.0, 360.0)

    class Workload:
        service_time_drift, performance_regression = False, False

    discounted = learning_after_drift(memory, DriftOutcome(Workload(), refit))
    later, _ = learning.learn(discounted, PRIOR, [], [], 60.0)
    assert later.evidence.observations == pytest.approx(memory.evidence.observations / 2.718281828, rel=0.01)
    assert learning_after_drift(memory, DriftOutcome(None, None)) is memory


def test_an_event_when_the_fit_moves_capacity_by_more_than_a_fifth() -> None:
    memory = learning.LearningMemory()
    memory, message = learning.capacity_moved(memory, 4.0, 4.6)  # +15 %: no Event
    assert message is None
    memory, message = learning.capacity_moved(memory, 4.0, 5.2)  # +30 % from the prior
    assert message is not None and "+30%" in message and "5.2" in message and "4" in message
    memory, message = learning.capacity_moved(memory, 8.0, 10.6)  # the workload doubled both: ratio 1.33, +2 %
    assert message is None
    memory, message = learning.capacity_moved(memory, 4.0, 3.9)  # back below the prior: -25 % from 1.3
    assert message is not None and "-25%" in message
    assert learning.capacity_moved(memory, None, 3.0) == (memory, None)


def test_the_token_budget_comes_from_the_engine_flags() -> None:
    from kiban.api.v1alpha1 import FoundationModel

    def fm(args: list[str]) -> FoundationModel:
        return FoundationModel.model_validate({
            "apiVersion": "kiban.dev/v1alpha1", "kind": "FoundationModel", "metadata": {"name": "m", "namespace": "ns"},
            "spec": {"model": {"uri": "hf://x/y", "parameters": "8B"}, "accelerator": {"profile": "nvidia-l4"},
                     "engine": {"extraArgs": args},
                     "scaling": {"minReplicas": 1, "maxReplicas": 2, "slo": {"ttftP95Ms": 500}}}})

    assert max_num_batched_tokens(fm([])) == 2048
    assert max_num_batched_tokens(fm(["--max-num-batched-tokens", "8192"])) == 8192
    assert max_num_batched_tokens(fm(["--max-num-batched-tokens=512", "--enforce-eager"])) == 512
    assert max_num_batched_tokens(fm(["--max-num-batched-tokens=lots"])) == 2048
