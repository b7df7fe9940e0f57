"""The peers' rules, one observation at a time: each reacts as its documentation says."""

from __future__ import annotations

import pytest

from kiban_dev.benchmark.observe import ITL_BUCKETS_S, TTFT_BUCKETS_S, FleetObservation
from kiban_dev.benchmark.peers import (
    AibrixAPAPolicy,
    KedaWaitingPolicy,
    KnativeKPAPolicy,
    KubeAIPolicy,
    StaticPolicy,
)


def obs(now: float, replicas: int = 2, ready: int | None = None, inflight: int = 0, inflight_avg: float = 0.0,
        waiting: int = 0, kv: float = 0.0, rate: float = 1.0) -> FleetObservation:
    ready = replicas if ready is None else ready
    return FleetObservation(
        now_s=now, window_s=15.0, arrival_rate_rps=rate,
        running=(0,) * ready, waiting=(waiting,) + (0,) * (ready - 1) if ready else (),
        kv_usage=(kv,) * ready, running_total=0, waiting_total=waiting, kv_usage_mean=kv,
        ttft_buckets_s=TTFT_BUCKETS_S, ttft_bucket_deltas=(0,) * (len(TTFT_BUCKETS_S) + 1),
        itl_buckets_s=ITL_BUCKETS_S, itl_bucket_deltas=(0,) * (len(ITL_BUCKETS_S) + 1),
        ttft_mean_s=None, itl_mean_s=None, mean_prompt_tokens=1000.0, mean_output_tokens=200.0,
        finished_in_window=10, replicas=replicas, ready_replicas=ready, proxy_inflight=inflight,
        proxy_inflight_avg=inflight_avg, concurrency_per_pod=inflight_avg / max(1, ready), front_queue=0,
    )


def test_kubeai_scales_up_at_once_and_down_after_the_delay() -> None:
    policy = KubeAIPolicy(target_requests=10, interval_s=10, window_s=20, scale_down_delay_s=30)
    assert policy.desired_replicas(obs(10, replicas=1, inflight=50)) == 5  # average of one sample
    assert policy.desired_replicas(obs(20, replicas=5, inflight=50)) == 5
    # the 20 s window (2 samples) forgets the load; three consecutive down decisions are needed
    assert policy.desired_replicas(obs(30, replicas=5, inflight=0)) == 5  # avg 25 -> 3, first down
    assert policy.desired_replicas(obs(40, replicas=5, inflight=0)) == 5
    assert policy.desired_replicas(obs(50, replicas=5, inflight=0)) == 1


def test_kpa_panics_on_a_burst_and_holds_its_size() -> None:
    policy = KnativeKPAPolicy(target_concurrency=10)
    for t in range(2, 62, 2):
        assert policy.desired_replicas(obs(t, replicas=1, inflight_avg=8.0)) == 1
    burst = policy.desired_replicas(obs(62, replicas=1, inflight_avg=200.0))
    assert burst >= 2  # the 6 s window sees the burst long before the 60 s one
    quiet = policy.desired_replicas(obs(64, replicas=burst, inflight_avg=0.0))
    assert quiet == burst  # no scale-down while panicking


def test_kpa_stable_mode_limits_scale_down_to_half() -> None:
    policy = KnativeKPAPolicy(target_concurrency=10)
    assert policy.desired_replicas(obs(2, replicas=8, inflight_avg=0.0)) == 4


def test_keda_follows_hpa_average_value_rules() -> None:
    policy = KedaWaitingPolicy(threshold=5)
    assert policy.desired_replicas(obs(15, replicas=2, waiting=40)) == 6  # ceil(40/5)=8, limited to max(2x, +4)
    assert policy.desired_replicas(obs(30, replicas=6, waiting=31)) == 6  # within 10 % of 30 = 6 x 5
    # the 300 s window still holds a recommendation of 8, so the HPA keeps the current 6
    assert policy.desired_replicas(obs(45, replicas=6, waiting=0)) == 6
    assert policy.desired_replicas(obs(400, replicas=6, waiting=0)) == 1  # window passed


def test_aibrix_apa_ratio_band_rate_limit_and_cooldown() -> None:
    policy = AibrixAPAPolicy(target_kv_usage=0.1)
    assert policy.desired_replicas(obs(15, replicas=2, kv=0.105)) == 2  # inside the +-10 % band
    assert AibrixAPAPolicy(target_kv_usage=0.1).desired_replicas(obs(15, replicas=2, kv=0.9)) == 4  # at most 2x
    policy = AibrixAPAPolicy(target_kv_usage=0.1)
    assert policy.desired_replicas(obs(15, replicas=2, kv=0.2)) == 4
    assert policy.desired_replicas(obs(30, replicas=4, kv=0.0)) == 4  # window mean 0.1: in the band
    assert policy.desired_replicas(obs(45, replicas=4, kv=0.0)) == 4  # below, but inside the cooldown
    assert policy.desired_replicas(obs(400, replicas=4, kv=0.0)) == 2  # cooldown over: at most 2x down


def test_static_policy_never_moves() -> None:
    policy = StaticPolicy(3)
    assert policy.desired_replicas(obs(15, replicas=3, inflight=500)) == 3
    with pytest.raises(ValueError, match="replicas"):
        StaticPolicy(0)


@pytest.mark.parametrize(("factory", "field"), [
    (lambda: KubeAIPolicy(target_requests=0), "target_requests"),
    (lambda: KnativeKPAPolicy(target_concurrency=-1), "target_concurrency"),
    (lambda: KedaWaitingPolicy(threshold=0), "threshold"),
    (lambda: AibrixAPAPolicy(target_kv_usage=2.0), "target_kv_usage"),
])
def test_bad_targets_name_their_field(factory, field) -> None:
    with pytest.raises(ValueError, match=field):
        factory()
