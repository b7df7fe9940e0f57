"""Wake from zero: requests the gateway holds scale a model at zero to one replica at once."""

from __future__ import annotations

from datetime import UTC, datetime

from kiban.autoscale.policy import Observation, PolicyState, ScalingConfig, decide
from kiban.autoscale.wake import held_requests, wake_wanted
from kiban.capacity.batching import Slo
from kiban.capacity.engine_profile import EngineProfile

PROFILE = EngineProfile(name="test/8B", gpu="test-gpu", model_params_b=8.0, alpha_ms=10.0, beta_ms=0.3,
                        gamma_ms=10.0, delta_ms=0.05, max_num_seqs=64, kv_cache_tokens=200_000,
                        startup_s=120.0, source="unit test")
NOW = 1_800_000_000.0


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def zero_config(**overrides) -> ScalingConfig:
    values = dict(min_replicas=0, max_replicas=4, slo=Slo(ttft_ms=500), startup_s=120.0, scale_to_zero_idle_s=60.0)
    values.update(overrides)
    return ScalingConfig(**values)


def unavailable(current: int, held: int, t: float = NOW) -> Observation:
    """What the collector gives at zero replicas: no engine scraped, so no metrics."""
    return Observation(time_s=t, metrics_available=False, reason_unavailable="no vLLM series",
                       current_replicas=current, held_requests=held)


def test_held_requests_wake_a_model_at_zero_without_metrics():
    decision, state = decide(unavailable(0, held=3), zero_config(), PolicyState(), PROFILE)
    assert decision.replicas == 1
    assert "3 requests held at the gateway" in decision.reason and "wake from zero" in decision.reason
    assert state.last_traffic_time_s == NOW  # held requests are traffic: the idle clock restarts


def test_without_held_requests_metrics_unavailable_keep_zero():
    decision, _ = decide(unavailable(0, held=0), zero_config(), PolicyState(), PROFILE)
    assert decision.replicas == 0


def test_wake_honours_min_replicas_and_the_gpu_budget():
    decision, _ = decide(unavailable(0, held=1), zero_config(min_replicas=0, max_replicas=4), PolicyState(), PROFILE)
    assert decision.replicas == 1
    capped, _ = decide(unavailable(0, held=1), zero_config(gpus_per_replica=2, gpu_budget=1), PolicyState(), PROFILE)
    assert capped.replicas == 0 and capped.limited == "GpuBudget"


def test_held_requests_are_never_idle_so_no_scale_to_zero():
    idle_obs = dict(metrics_available=True, arrival_rate_rps=0.0, mean_prompt_tokens=100.0, mean_output_tokens=10.0,
                    running=0.0, waiting=0.0, current_replicas=1, ready_replicas=0)
    state = PolicyState(last_traffic_time_s=NOW - 3600, first_seen_time_s=NOW - 7200)
    gone, _ = decide(Observation(time_s=NOW, **idle_obs), zero_config(), state, PROFILE)
    assert gone.replicas == 0  # idle for an hour: to zero
    kept, _ = decide(Observation(time_s=NOW, held_requests=2, **idle_obs), zero_config(), state, PROFILE)
    assert kept.replicas == 1  # a request waits at the gateway (the pod is still starting)


def held_status(*entries: tuple[int, float]) -> dict:
    return {"gateway": {"held": {f"gw-{i}": {"requests": n, "since": stamp(t), "heartbeat": stamp(t)}
                                 for i, (n, t) in enumerate(entries)}}}


def test_held_requests_sum_fresh_entries_and_ignore_stale_ones():
    status = held_status((3, NOW - 5), (2, NOW - 10), (7, NOW - 120))  # the third replica died holding
    assert held_requests(status, NOW) == 5
    assert held_requests({}, NOW) == 0 and held_requests(None, NOW) == 0
    assert held_requests({"gateway": {"held": {"x": {"requests": "3", "heartbeat": "soon"}}}}, NOW) == 0


def test_wake_wanted_only_at_zero_with_autoscaling_on():
    body = {"spec": {"scaling": {"minReplicas": 0, "replicas": 0}}, "status": held_status((1, NOW))}
    assert wake_wanted(body, NOW)
    assert not wake_wanted({**body, "spec": {"scaling": {"minReplicas": 0, "replicas": 1}}}, NOW)
    assert not wake_wanted({**body, "spec": {"scaling": {"minReplicas": 0, "replicas": 0, "autoscaling": False}}}, NOW)
    assert not wake_wanted({**body, "status": held_status((1, NOW - 600))}, NOW)
