"""Automatic prefix caching in the simulated engine, against vLLM 0.33's rules worked by hand.

The rules (vllm/v1/core/kv_cache_manager.py get_computed_blocks, single_type_kv_cache_manager.py
find_longest_cache_hit, block_pool.py free queue): whole blocks only, at most (tokens - 1) //
block_size of them, registered when allocated so a later request in the same step hits, freed
blocks stay hittable and are evicted least recently freed first, a request's tail before its head.
Block hashes here are plain labels; chaining them is the caller's job (sim.tokens does it).
"""

from __future__ import annotations

import pytest

from kiban.capacity.engine_profile import EngineProfile
from kiban_serving.sim.engine import Engine

PROFILE = EngineProfile(
    name="test/1B", gpu="test", model_params_b=1.0,
    alpha_ms=10.0, beta_ms=1.0, gamma_ms=20.0, delta_ms=0.1,
    max_num_seqs=4, kv_cache_tokens=1600, startup_s=1.0, source="unit test numbers",
)  # fmt: skip


def hashes(label: str, blocks: int) -> list[str]:
    return [f"{label}{i}" for i in range(blocks)]


def run_all(engine: Engine, now: float = 0.0):
    steps = []
    while engine.next_step_needed():
        steps.append(engine.step(now))
    return steps


def finished(steps):
    return {f.request_id: f for s in steps for f in s.finished}


def test_a_repeated_prompt_skips_all_but_its_last_block():
    """48-token prompt, blocks of 16: a repeat hits min(3, (48 - 1) // 16) = 2 blocks = 32 tokens,
    so it prefills 16 tokens: TTFT 20 + 0.1 * 16 = 21.6 ms instead of 20 + 0.1 * 48 = 24.8 ms."""
    engine = Engine(PROFILE, enable_prefix_caching=True)
    engine.submit("first", 48, 2, 0.0, block_hashes=hashes("p", 3))
    done = finished(run_all(engine))
    engine.submit("again", 48, 2, 1.0, block_hashes=hashes("p", 3))
    steps = run_all(engine, 1.0)
    done |= finished(steps)
    assert done["first"].ttft_s * 1e3 == pytest.approx(24.8)
    assert done["again"].ttft_s * 1e3 == pytest.approx(21.6)
    assert steps[0].num_prefill_tokens == 16
    assert (done["first"].cached_tokens, done["again"].cached_tokens) == (0, 32)
    assert (engine.prefix_cache_queries_total, engine.prefix_cache_hits_total) == (96, 32)
    assert steps[0].prefix_cache == [("again", 48, 32)]


def test_the_same_prompt_admitted_in_the_same_step_already_hits():
    """Blocks are registered at allocation: the second request of the step finds the first's."""
    engine = Engine(PROFILE, enable_prefix_caching=True)
    for name in ("a", "b"):
        engine.submit(name, 48, 1, 0.0, block_hashes=hashes("p", 3))
    first = engine.step(0.0)
    assert first.num_prefill_tokens == 48 + 16
    assert first.prefix_cache == [("a", 48, 0), ("b", 48, 32)]


def test_a_shared_prefix_hits_up_to_the_first_different_block():
    engine = Engine(PROFILE, enable_prefix_caching=True)
    engine.submit("one", 64, 1, 0.0, block_hashes=["s0", "s1", "x2", "x3"])
    run_all(engine)
    engine.submit("two", 64, 1, 1.0, block_hashes=["s0", "s1", "y2", "y3"])
    step = engine.step(1.0)
    assert step.prefix_cache == [("two", 64, 32)] and step.num_prefill_tokens == 32


def test_eviction_takes_the_least_recently_freed_and_a_requests_tail_first():
    """4 blocks of KV. A (32 prompt + 1 out = 3 blocks, hashes a0 a1) finishes: free queue a1, a0
    (freed in reverse). B (32 + 1, b0 b1) needs 3 of the 4 free blocks: 2 are empty, one cached
    block is evicted, a1 (the tail). C repeats A's prompt: a0 is still there, a 16-token hit."""
    engine = Engine(PROFILE, kv_cache_tokens=64, enable_prefix_caching=True)
    engine.submit("A", 32, 1, 0.0, block_hashes=hashes("a", 2))
    run_all(engine)
    assert engine.cached_free_blocks == 2 and engine.kv_usage == 0.0
    engine.submit("B", 32, 1, 1.0, block_hashes=hashes("b", 2))
    run_all(engine, 1.0)
    engine.submit("C", 32, 1, 2.0, block_hashes=hashes("a", 2))
    step = engine.step(2.0)
    assert step.prefix_cache == [("C", 32, 16)]


def test_caching_off_or_no_hashes_leaves_the_engine_as_it_was():
    def timings(with_hashes: bool = True, **kwargs):
        engine = Engine(PROFILE, max_num_seqs=2, kv_cache_tokens=320, **kwargs)
        for i in range(6):
            engine.submit(f"r{i}", 100, 30, 0.001 * i, block_hashes=hashes("same", 6) if with_hashes else None)
        done = finished(run_all(engine))
        return [(d.ttft_s, d.e2e_s, d.preemptions) for d in done.values()], engine

    plain, _ = timings(with_hashes=False)
    off, off_engine = timings(enable_prefix_caching=False)
    assert plain == off
    assert (off_engine.prefix_cache_queries_total, off_engine.prefix_cache_hits_total) == (0, 0)
    on, on_engine = timings(enable_prefix_caching=True)
    assert on != plain and on_engine.prefix_cache_hits_total > 0


def test_hits_survive_preemption_and_kv_accounting_balances():
    engine = Engine(PROFILE, max_num_seqs=4, kv_cache_tokens=256, enable_prefix_caching=True)
    for i in range(4):
        engine.submit(f"r{i}", 64, 40, 0.0, block_hashes=hashes("shared", 4) + hashes(f"own{i}", 2))
    done = finished(run_all(engine))
    assert len(done) == 4 and all(d.output_tokens == 40 for d in done.values())
    assert engine.used_blocks == 0 and engine.kv_usage == 0.0
    assert engine.cached_free_blocks <= engine.total_blocks
