"""The simulated engine: batching limits, chunked prefill, KV preemption, timing, determinism."""

from __future__ import annotations

import dataclasses

import pytest

from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.profiles import PROFILES
from kiban_serving.sim.engine import Engine

PROFILE = EngineProfile(
    name="test/1B", gpu="test", model_params_b=1.0,
    alpha_ms=10.0, beta_ms=1.0, gamma_ms=20.0, delta_ms=0.1,
    max_num_seqs=4, kv_cache_tokens=1600, startup_s=1.0, source="unit test numbers",
)  # fmt: skip


def run_all(engine: Engine, now: float = 0.0):
    steps = []
    while engine.next_step_needed():
        steps.append(engine.step(now))
    return steps


def test_lone_request_ttft_is_prefill_and_itl_is_single_decode_step():
    engine = Engine(PROFILE)
    engine.submit("a", prompt_tokens=500, max_output_tokens=5, now_s=1.0)
    steps = run_all(engine, 1.0)
    (done,) = [f for s in steps for f in s.finished]
    assert done.ttft_s == pytest.approx((20.0 + 0.1 * 500) / 1e3)
    assert done.mean_itl_s == pytest.approx((10.0 + 1.0) / 1e3)
    assert done.output_tokens == 5 and done.finish_reason == "length"
    assert done.queue_s == 0.0


def test_running_never_exceeds_max_num_seqs_and_rest_wait():
    engine = Engine(PROFILE, max_num_seqs=2)
    for i in range(5):
        engine.submit(f"r{i}", 10, 3, 0.0)
    first = engine.step(0.0)
    assert engine.num_running == 2 and engine.num_waiting == 3
    assert [rid for rid, _ in first.newly_scheduled] == ["r0", "r1"]
    while engine.next_step_needed():
        engine.step(0.0)
        assert engine.num_running <= 2


def test_chunked_prefill_splits_long_prompt_over_token_budget():
    engine = Engine(PROFILE, max_num_batched_tokens=256)
    engine.submit("long", prompt_tokens=600, max_output_tokens=1, now_s=0.0)
    steps = run_all(engine)
    assert [s.num_prefill_tokens for s in steps] == [256, 256, 88]
    assert [len(s.tokens) for s in steps] == [0, 0, 1]
    expected = 3 * 20.0 + 0.1 * 600
    assert steps[-1].finished[0].ttft_s == pytest.approx(expected / 1e3)


def test_decodes_share_a_step_with_a_new_prefill():
    engine = Engine(PROFILE)
    engine.submit("a", 100, 10, 0.0)
    engine.step(0.0)  # a's prefill
    engine.submit("b", 100, 10, engine.clock_s)
    mixed = engine.step(engine.clock_s)
    assert mixed.num_decode_tokens == 1 and mixed.num_prefill_tokens == 100
    assert mixed.duration_s == pytest.approx((max(10, 20) + 1 + 0.1 * 100) / 1e3)


def test_kv_full_preempts_newest_running_request_and_it_recomputes():
    # 1600 KV tokens = 100 blocks; two requests of 760 prompt tokens fit at first (2 x 48
    # blocks) but need 2 x 54 blocks at 860 tokens, so the newest is preempted on the way.
    engine = Engine(PROFILE, max_num_seqs=4)
    engine.submit("old", 760, 100, 0.0)
    engine.submit("new", 760, 100, 0.0)
    steps = run_all(engine)
    preempted = [rid for s in steps for rid in s.preempted]
    assert preempted and set(preempted) == {"new"}
    assert engine.num_preemptions == len(preempted)
    finished = {f.request_id: f for s in steps for f in s.finished}
    assert finished["new"].preemptions >= 1 and finished["old"].preemptions == 0
    assert finished["new"].output_tokens == 100
    recompute = [s for s in steps if s.num_prefill_tokens > 760]  # prompt + generated so far
    assert recompute, "the preempted request recomputes its prompt and generated tokens"
    assert engine.used_blocks == 0 and engine.kv_usage == 0.0


def test_kv_usage_counts_blocks_of_prompt_and_generated_tokens():
    engine = Engine(PROFILE)
    engine.submit("a", 32, 5, 0.0)
    engine.step(0.0)
    assert engine.used_blocks == 2  # 32 prompt tokens = 2 blocks of 16
    engine.step(0.0)  # first decode adds the first generated token's KV
    assert engine.used_blocks == 3
    assert engine.kv_usage == pytest.approx(3 / 100)


def test_waiting_request_is_not_scheduled_before_it_arrives():
    engine = Engine(PROFILE)
    engine.submit("a", 10, 50, 0.0)
    engine.submit("late", 10, 1, 0.2)
    first = engine.step(0.0)
    assert [rid for rid, _ in first.newly_scheduled] == ["a"]
    finished = engine.advance_to(100.0)
    late = next(f for f in finished if f.request_id == "late")
    assert late.first_scheduled_s >= 0.2


def test_stop_at_tokens_ends_early_with_stop_reason():
    engine = Engine(PROFILE)
    engine.submit("a", 10, 50, 0.0, stop_at_tokens=7)
    (done,) = engine.advance_to(10.0)
    assert done.output_tokens == 7 and done.finish_reason == "stop"


def _workload(engine: Engine) -> None:
    arrivals = [(i * 0.013, 50 + (i * 37) % 400, 5 + (i * 11) % 60) for i in range(60)]
    for i, (t, prompt, out) in enumerate(arrivals):
        engine.advance_to(t)  # events before this arrival (finished lists dropped here)
        engine.submit(f"r{i}", prompt, out, t)


def test_advance_to_with_decode_jumps_matches_step_by_step():
    fast, slow = Engine(PROFILE, max_num_seqs=8), Engine(PROFILE, max_num_seqs=8)
    arrivals = [(i * 0.05, 50 + (i * 37) % 400, 5 + (i * 11) % 60) for i in range(40)]
    fast_done, slow_done = [], []
    for i, (t, prompt, out) in enumerate(arrivals):
        fast_done += fast.advance_to(t)
        while slow.next_step_needed() and slow.clock_s < t:
            if not slow.num_running and slow._waiting[0].arrival_s >= t:
                break
            result = slow.step(slow.clock_s)
            slow_done += result.finished
            if result.end_s == result.start_s:
                break
        fast.submit(f"r{i}", prompt, out, t)
        slow.submit(f"r{i}", prompt, out, t)
    fast_done += fast.advance_to(1e9)
    slow_done += [f for s in run_all(slow, slow.clock_s) for f in s.finished]
    assert len(fast_done) == len(slow_done) == 40
    key = lambda f: f.request_id  # noqa: E731
    for a, b in zip(sorted(fast_done, key=key), sorted(slow_done, key=key)):
        assert a.first_token_s == pytest.approx(b.first_token_s, abs=1e-9)
        assert a.finished_s == pytest.approx(b.finished_s, abs=1e-9)
        assert a.max_itl_s == pytest.approx(b.max_itl_s, abs=1e-9)
    assert fast.generation_tokens_total == slow.generation_tokens_total
    assert fast.num_steps == slow.num_steps
    assert fast.num_preemptions == slow.num_preemptions > 0  # the workload exercises KV pressure


def test_same_seed_same_timeline_and_other_seed_differs_with_jitter():
    def timeline(seed: int) -> list[float]:
        engine = Engine(PROFILE, seed=seed, step_jitter=0.05)
        _workload(engine)
        return [f.finished_s for f in engine.advance_to(1e9)]

    assert timeline(1) == timeline(1)
    assert timeline(1) != timeline(2)


def test_abort_frees_kv_and_forgets_request():
    engine = Engine(PROFILE)
    engine.submit("a", 100, 100, 0.0)
    engine.step(0.0)
    assert engine.abort("a") and engine.used_blocks == 0 and not engine.next_step_needed()
    assert not engine.abort("a")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt_tokens": 0}, "prompt_tokens"),
        ({"max_output_tokens": -1}, "max_output_tokens"),
        ({"prompt_tokens": 2000}, "KV cache"),
    ],
)
def test_submit_rejects_bad_input_naming_the_field(kwargs, field):
    engine = Engine(PROFILE)
    args = {"request_id": "x", "prompt_tokens": 10, "max_output_tokens": 10, "now_s": 0.0} | kwargs
    with pytest.raises(ValueError, match=field):
        engine.submit(**args)


def test_engine_rejects_bad_configuration():
    with pytest.raises(ValueError, match="max_num_seqs"):
        Engine(dataclasses.replace(PROFILE, max_num_seqs=0))
    with pytest.raises(ValueError, match="step_jitter"):
        Engine(PROFILE, step_jitter=1.5)


def test_real_profile_decode_throughput_grows_with_batch():
    profile = PROFILES["nvidia-a100-80gb/8B"]
    engine = Engine(profile)
    one = engine.step_time_s(1, 0)
    many = engine.step_time_s(64, 0)
    assert 64 / many > 10 / one  # batching pays: 64 sequences give > 10x the tokens/s


def test_advance_to_infinity_drains_the_engine():
    engine = Engine(PROFILE)
    engine.submit("a", 10, 30, 0.0)
    (done,) = engine.advance_to(float("inf"))
    assert done.output_tokens == 30 and not engine.next_step_needed()
