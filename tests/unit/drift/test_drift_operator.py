"""The operator's drift glue: Prometheus answers → windows → assessment → status, condition,
Events, metric values and the capacity model's re-fit. Pure; no server."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from kiban.api.v1alpha1 import Condition, DriftSpec, DriftStatus
from kiban.autoscale.policy import Observation, PolicyState
from kiban.drift import tracker as drift
from kiban.drift.histograms import bin_samples, cumulative_buckets, itl_seconds_buckets, token_count_buckets
from kiban.metrics import ModelKey, OperatorMetrics

TOKEN_BUCKETS = token_count_buckets(8192)
CONFIG = drift.drift_config_from(DriftSpec(enabled=True, window_seconds=60, reference_window_seconds=300),
                                 min_samples=50)


def answers(prompts, outputs, itl=None):
    """What `sum by (le) (increase(..._bucket[w]))` and `sum(increase(..._sum[w]))` return for these requests."""
    buckets, sums = {}, {}
    for signal, values, bounds in (("prompt_tokens", prompts, TOKEN_BUCKETS),
                                   ("generation_tokens", outputs, TOKEN_BUCKETS),
                                   ("itl_seconds", itl, itl_seconds_buckets())):
        if values is None:
            continue
        histogram = bin_samples(values, bounds)
        buckets[signal] = cumulative_buckets(histogram)
        sums[signal] = histogram.total_sum
    return buckets, sums


def conv(rng, n=300):
    return rng.lognormal(math.log(900), 0.5, n).round(), rng.lognormal(math.log(220), 0.6, n).round()


def code(rng, n=300):
    return rng.lognormal(math.log(2000), 0.6, n).round(), rng.lognormal(math.log(15), 0.7, n).round()


def feed(memory, windows, *, start=1000.0, before=(1000.0, 250.0), token_window_s=600.0, config=CONFIG):
    outcomes = []
    for i, (buckets, sums) in enumerate(windows):
        memory, outcome = drift.drift_step(memory, buckets, sums, now_s=start + (i + 1) * config.window_s,
                                           range_s=config.window_s, config=config, before=before,
                                           token_window_s=token_window_s)
        outcomes.append(outcome)
    return memory, outcomes


# -- configuration and revisions ---------------------------------------------------------------------


def test_spec_maps_onto_the_detector_and_operator_overrides_win():
    spec = DriftSpec(enabled=True, window_seconds=120, reference_window_seconds=360,
                     js_divergence_threshold=0.2, p_value_threshold=0.01)
    config = drift.drift_config_from(spec)
    assert (config.window_s, config.rolling_windows, config.js_threshold) == (120.0, 3, 0.2)
    assert (config.ks_alpha, config.mean_shift_alpha, config.min_samples) == (0.01, 0.01, 100)
    assert config.reference_policy == "rolling" and config.psi_threshold == 0.75
    short = drift.drift_config_from(spec, window_s=15, min_samples=20, psi_threshold=1.5)
    assert (short.window_s, short.rolling_windows, short.min_samples, short.psi_threshold) == (15.0, 24, 20, 1.5)


def test_engine_revision_ignores_scaling_and_drift_but_not_the_engine():
    spec = {"model": {"uri": "hf://x"}, "engine": {"maxNumSeqs": 64}, "scaling": {"replicas": 2}}
    same = {**spec, "scaling": {"replicas": 5}, "drift": {"enabled": True}}
    assert drift.engine_revision(spec) == drift.engine_revision(same)
    assert drift.engine_revision(spec) != drift.engine_revision({**spec, "engine": {"maxNumSeqs": 32}})


def test_a_new_revision_counts_but_the_first_one_seen_does_not():
    memory = drift.note_revision(drift.DriftMemory(), "a")
    assert memory.generation == 0 and memory.detector.generation == 0
    assert drift.note_revision(memory, "a") is memory
    assert drift.note_revision(memory, "b").generation == 1


# -- answers → windows -------------------------------------------------------------------------------


def test_increase_answers_with_fractions_and_float_noise_become_bins():
    histogram = drift.histogram_from_increase(
        [("+Inf", 10.5), ("1.0", 2.0), ("10.0", 7.000000001), ("5.0", 7.0000001)], 52.5)
    assert histogram.upper_bounds == (1.0, 5.0, 10.0)
    assert histogram.counts == pytest.approx((2.0, 5.0000001, 0.0, 3.4999999))
    assert histogram.mean() == pytest.approx(5.0)


def test_window_observation_has_every_signal_and_the_load_per_engine():
    rng = np.random.default_rng(1)
    prompts, outputs = conv(rng, 120)
    buckets, sums = answers(prompts, outputs, rng.uniform(0.02, 0.03, 120))
    window = drift.window_observation(buckets, sums, end_time=60.0, window_s=60.0, generation=2)
    assert set(window.histograms) == {"prompt_tokens", "generation_tokens", "itl_seconds"}
    # (completions/s, prompt tokens/s) of the 120 requests over 60 s
    assert window.load_rps == pytest.approx((2.0, prompts.sum() / 60.0)) and window.generation == 2
    assert window.histograms["prompt_tokens"].mean() == pytest.approx(prompts.mean())
    assert drift.window_observation({}, {}, end_time=60.0, window_s=60.0, generation=0) is None
    per_engine = drift.window_observation(buckets, sums, end_time=60.0, window_s=60.0, generation=2, replicas=2)
    assert per_engine.load_rps == pytest.approx((1.0, prompts.sum() / 120.0))  # per ready replica
    batched = drift.window_observation(buckets, sums, end_time=60.0, window_s=60.0, generation=2, replicas=2,
                                       batch_per_engine=7.5)
    assert batched.load_rps == pytest.approx((1.0, prompts.sum() / 120.0, 7.5))  # and the batch per engine


def test_a_window_carries_the_fewest_and_most_replicas_the_passes_saw():
    rng = np.random.default_rng(3)
    memory = drift.note_revision(drift.DriftMemory(), "r1")
    common = dict(range_s=60.0, config=CONFIG, before=(1000.0, 250.0), token_window_s=600.0)
    memory, first = drift.drift_step(memory, *answers(*conv(rng), rng.uniform(0.1, 0.12, 3000)), now_s=1060.0,
                                     replicas=1, **common)
    assert memory.detector.replicas == 1
    memory = drift.note_replicas(drift.note_replicas(memory, 1), 2)  # passes between the windows
    memory, second = drift.drift_step(memory, *answers(*conv(rng), rng.uniform(0.1, 0.12, 3000)), now_s=1120.0,
                                      replicas=2, **common)
    report = second.assessment.reports["itl_seconds"]
    assert report.status == "incomparable_load" and "1 → 1-2 replicas" in report.message
    assert memory.replicas_seen == (2, 2)  # the next window starts at the fleet of this one's end
    assert memory.detector.replicas is None  # no single fleet size to reference


def test_faster_tokens_after_a_scale_up_are_not_service_time_drift():
    """The same model-wide load on twice the replicas: each engine's batch halves and its ITL
    drops; at the per-replica load that is not comparable, so no ServiceTimeDrift."""
    rng = np.random.default_rng(5)
    memory = drift.note_revision(drift.DriftMemory(), "r1")
    slow, fast = (lambda: rng.uniform(0.10, 0.14, 4000)), (lambda: rng.uniform(0.07, 0.09, 4000))
    for i in range(3):
        memory, _ = drift.drift_step(memory, *answers(*conv(rng), slow()), now_s=1000.0 + 60 * (i + 1), range_s=60.0,
                                     config=CONFIG, before=(1000.0, 250.0), token_window_s=600.0, replicas=1)
    after = dict(memory=memory, now_s=1240.0, range_s=60.0, config=CONFIG, before=(1000.0, 250.0), token_window_s=600.0)
    _, scaled_up = drift.drift_step(after.pop("memory"), *answers(*conv(rng), fast()), replicas=2, **after)
    assert scaled_up.assessment.reports["itl_seconds"].status == "incomparable_load"
    assert not scaled_up.assessment.service_time_drift
    _, same_batch = drift.drift_step(memory, *answers(*conv(rng), fast()), replicas=1, **after)
    assert same_batch.assessment.service_time_drift  # one replica, same load, faster: the engine changed


# -- conv → code: workload drift and the re-fit ---------------------------------------------------------


def test_conv_then_code_declares_workload_drift_and_refits_on_the_new_means():
    rng = np.random.default_rng(7)
    windows = [answers(*conv(rng)) for _ in range(3)]
    code_prompts, code_outputs = code(rng)
    windows.append(answers(code_prompts, code_outputs))
    memory, outcomes = feed(drift.note_revision(drift.DriftMemory(), "r1"), windows)

    first = outcomes[0].assessment
    assert drift.drift_condition(first, 4)["status"] == "Unknown"
    assert drift.drift_condition(first, 4)["reason"] == drift.NOT_EVALUATED
    assert all(not o.assessment.workload_drift for o in outcomes[:3])
    assert drift.drift_condition(outcomes[2].assessment, 4)["status"] == "False"

    shifted = outcomes[3].assessment
    assert shifted.workload_drift and shifted.refit_capacity_model
    refit = outcomes[3].new_refit
    assert refit is memory.refit
    assert refit.prompt_after == pytest.approx(code_prompts.mean())
    assert refit.output_after == pytest.approx(code_outputs.mean())
    assert (refit.prompt_before, refit.output_before) == (1000.0, 250.0)
    assert refit.until_s == shifted.end_time + 600.0

    condition = drift.drift_condition(shifted, 4, memory.refit)
    assert (condition["status"], condition["reason"], condition["observedGeneration"]) == ("True", "WorkloadDrift", 4)
    assert "generation_tokens drifted: PSI" in condition["message"]
    assert "re-fitted the capacity model" in condition["message"] and "output 250 →" in condition["message"]
    Condition.model_validate({**condition, "lastTransitionTime": "2024-01-01T00:00:00Z"})

    status = drift.drift_status(shifted, memory.refit)
    DriftStatus.model_validate(status)
    assert status["detected"] is True and status["jsDivergence"] > CONFIG.js_threshold
    assert 0 <= status["pValue"] < 0.01 and status["lastEvaluationTime"].endswith("Z")
    assert "prompt 1000 →" in status["message"]


def test_a_switch_in_sparse_windows_refits_on_the_merged_means():
    """Two windows of 30 code requests each (min_samples 50): the second compares them merged,
    declares, and the re-fit takes the means of all 60, not only of the declaring window's 30."""
    rng = np.random.default_rng(11)
    windows = [answers(*conv(rng)) for _ in range(3)]
    first, second = code(rng, n=30), code(rng, n=30)
    memory, outcomes = feed(drift.note_revision(drift.DriftMemory(), "r1"),
                            windows + [answers(*first), answers(*second)])
    assert outcomes[3].assessment.reports["generation_tokens"].status == "insufficient_samples"
    assert outcomes[3].new_refit is None
    refit = outcomes[4].new_refit
    assert outcomes[4].assessment.workload_drift and refit is not None
    assert refit.prompt_after == pytest.approx(np.concatenate([first[0], second[0]]).mean())
    assert refit.output_after == pytest.approx(np.concatenate([first[1], second[1]]).mean())


def test_events_on_declaration_refit_and_clearing_only():
    rng = np.random.default_rng(7)
    windows = [answers(*conv(rng)) for _ in range(3)] + [answers(*code(rng))]
    memory, outcomes = feed(drift.note_revision(drift.DriftMemory(), "r1"), windows)
    stable = drift.drift_condition(outcomes[2].assessment, 1)
    drifted = drift.drift_condition(outcomes[3].assessment, 1, memory.refit)
    events = drift.drift_events(stable, drifted, outcomes[3].new_refit)
    assert [(t, r) for t, r, _ in events] == [("Warning", "WorkloadDrift"), ("Normal", drift.REFIT_EVENT)]
    assert events[1][2].startswith("Re-fitted the capacity model")
    assert drift.drift_events(drifted, drifted) == []
    assert drift.drift_events(drifted, stable) == [("Normal", drift.CLEARED_EVENT, stable["message"])]
    assert drift.drift_events(None, stable) == []


def test_metric_values_reach_the_drift_gauges():
    rng = np.random.default_rng(7)
    windows = [answers(*conv(rng)) for _ in range(3)] + [answers(*code(rng))]
    _, outcomes = feed(drift.note_revision(drift.DriftMemory(), "r1"), windows)
    metrics = OperatorMetrics(CollectorRegistry())
    key = ModelKey("ns", "chat", "chat")
    for attribute, value, labels in drift.drift_metric_values(outcomes[3].assessment):
        metrics.set_model_gauge(attribute, key, value, **labels)
    base = {"namespace": "ns", "foundationmodel": "chat", "model_name": "chat"}
    get = metrics.registry.get_sample_value
    assert get("kiban_drift_detected", {**base, "signal": "generation_tokens"}) == 1.0
    assert get("kiban_drift_score", {**base, "signal": "generation_tokens", "test": "psi"}) > CONFIG.psi_threshold
    assert get("kiban_drift_score", {**base, "signal": "prompt_tokens", "test": "ks"}) is not None


def test_no_override_when_the_token_window_is_not_longer_than_the_drift_window():
    rng = np.random.default_rng(7)
    windows = [answers(*conv(rng)) for _ in range(3)] + [answers(*code(rng))]
    memory, outcomes = feed(drift.note_revision(drift.DriftMemory(), "r1"), windows, token_window_s=60.0)
    refit = outcomes[3].new_refit
    assert refit.until_s == refit.time_s and not refit.active(refit.time_s)
    obs = Observation(time_s=refit.time_s, metrics_available=True, arrival_rate_rps=1.0,
                      mean_prompt_tokens=1100.0, mean_output_tokens=90.0, current_replicas=1)
    assert drift.observation_with_refit(obs, refit) is obs
    # the re-fit is still told in the window that made it
    assert "re-fitted" in drift.drift_condition(outcomes[3].assessment, 1, refit)["message"]


def test_the_override_feeds_the_policy_until_the_token_window_has_rolled_over():
    refit = drift.Refit(100.0, 1000.0, 250.0, 2000.0, 20.0, until_s=700.0)
    obs = Observation(time_s=160.0, metrics_available=True, arrival_rate_rps=1.0,
                      mean_prompt_tokens=1100.0, mean_output_tokens=230.0, current_replicas=1)
    used = drift.observation_with_refit(obs, refit)
    assert (used.mean_prompt_tokens, used.mean_output_tokens, used.arrival_rate_rps) == (2000.0, 20.0, 1.0)
    later = Observation(time_s=700.0, metrics_available=True, arrival_rate_rps=1.0,
                        mean_prompt_tokens=1900.0, mean_output_tokens=22.0, current_replicas=1)
    assert drift.observation_with_refit(later, refit) is later
    missing = Observation(time_s=160.0, metrics_available=False, current_replicas=1)
    assert drift.observation_with_refit(missing, refit) is missing


def test_following_windows_update_an_active_override():
    rng = np.random.default_rng(3)
    refit = drift.Refit(100.0, 1000.0, 250.0, 2000.0, 20.0, until_s=700.0)
    prompts, outputs = code(rng)
    buckets, sums = answers(prompts, outputs)
    window = drift.window_observation(buckets, sums, end_time=160.0, window_s=60.0, generation=0)
    followed = drift.follow_refit(refit, window, min_samples=50)
    assert followed.prompt_after == pytest.approx(prompts.mean()) and followed.time_s == 100.0
    assert drift.follow_refit(refit, window, min_samples=1000) is refit  # too few requests
    expired = drift.Refit(100.0, 1000.0, 250.0, 2000.0, 20.0, until_s=150.0)
    assert drift.follow_refit(expired, window, min_samples=50) is expired


def test_reset_keeps_the_stabilisation_window_unless_asked():
    state = PolicyState(recommendations=((1.0, 5),), rate_samples=((1.0, 3.0),), last_scale_time_s=1.0,
                        last_traffic_time_s=2.0, first_seen_time_s=0.5)
    assert drift.reset_policy_state(state) == state  # no token history in this policy: nothing to forget
    reset = drift.reset_policy_state(state, forget_recommendations=True)
    assert (reset.recommendations, reset.rate_samples) == ((), ())
    assert (reset.last_scale_time_s, reset.last_traffic_time_s, reset.first_seen_time_s) == (1.0, 2.0, 0.5)


# -- service time: regression after a spec change --------------------------------------------------------


def test_slower_itl_after_an_engine_change_is_a_performance_regression():
    rng = np.random.default_rng(11)

    def window(itl_mean):
        prompts, outputs = conv(rng, 200)
        return answers(prompts, outputs, rng.normal(itl_mean, 0.002, 200).clip(0.001))

    memory = drift.note_revision(drift.DriftMemory(), "old")
    memory, outcomes = feed(memory, [window(0.03) for _ in range(3)])
    assert not outcomes[-1].assessment.service_time_drift
    memory = drift.note_revision(memory, "new")  # e.g. spec.engine changed
    memory, outcomes = feed(memory, [window(0.09)], start=1000.0 + 3 * CONFIG.window_s)
    assessment = outcomes[0].assessment
    assert assessment.performance_regression and not assessment.workload_drift
    condition = drift.drift_condition(assessment, 7)
    assert (condition["status"], condition["reason"]) == ("True", "PerformanceRegression")
    assert "itl_seconds" in condition["message"] and "ms" in condition["message"]
    assert outcomes[0].new_refit is None


def test_a_window_without_series_only_moves_the_schedule():
    memory = drift.note_revision(drift.DriftMemory(), "a")
    after, outcome = drift.drift_step(memory, {}, {}, now_s=500.0, range_s=60.0, config=CONFIG,
                                      before=(None, None), token_window_s=600.0)
    assert outcome == drift.DriftOutcome(None, None)
    assert (after.next_window_s, after.last_window_end_s, after.detector) == (560.0, 500.0, memory.detector)


def test_window_range_covers_a_late_tick_within_two_windows():
    memory = drift.DriftMemory(last_window_end_s=100.0)
    assert drift.window_range_s(drift.DriftMemory(), 500.0, CONFIG) == 60.0
    assert drift.window_range_s(memory, 175.0, CONFIG) == 75.0
    assert drift.window_range_s(memory, 1000.0, CONFIG) == 120.0
