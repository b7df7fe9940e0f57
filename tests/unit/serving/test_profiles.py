"""Engine profiles: coverage of GPUs and sizes, derivation arithmetic, lookup errors."""

from __future__ import annotations

import pytest

from kiban.capacity.profiles import MODELS, PROFILES, get_profile, get_profile_by_name


@pytest.mark.parametrize(
    "key",
    ["nvidia-l4/8B", "nvidia-a100-80gb/8B", "nvidia-h100-80gb/8B", "nvidia-a100-80gb/70B",
     "nvidia-h100-80gb/70B", "nvidia-mig-1g.10gb/1B", "nvidia-mig-1g.10gb/3B"],
)  # fmt: skip
def test_required_profiles_exist_with_sane_numbers(key):
    p = PROFILES[key]
    assert p.name == key
    assert 0 < p.beta_ms < p.alpha_ms < 200
    assert p.delta_ms > 0 and p.gamma_ms > 0
    assert p.kv_cache_tokens > 8192  # room for at least one long request
    assert p.startup_s > 30
    assert p.source


def test_llama_8b_kv_bytes_per_token_is_128_kib():
    assert MODELS[8.0].kv_bytes_per_token == 128 * 1024


def test_l4_8b_kv_tokens_is_memory_after_weights_over_kv_bytes():
    # 24 GB x 0.9 - 8.03e9 x 2 bytes = 5.54e9 bytes; / 131072 = 42266 tokens
    assert PROFILES["nvidia-l4/8B"].kv_cache_tokens == 42266


def test_a100_8b_alpha_reproduces_the_measured_batch_one_step_when_scaled_to_a100_40gb():
    # The measurement: 13.3 ms per token on A100-40GB (1555 GB/s); alpha scales with bandwidth.
    alpha_40gb = PROFILES["nvidia-a100-80gb/8B"].alpha_ms * 2039 / 1555
    assert alpha_40gb == pytest.approx(13.3, rel=0.02)


def test_faster_gpu_has_faster_steps():
    l4, a100, h100 = (PROFILES[f"{g}/8B"] for g in ("nvidia-l4", "nvidia-a100-80gb", "nvidia-h100-80gb"))
    assert l4.alpha_ms > a100.alpha_ms > h100.alpha_ms
    assert l4.delta_ms > a100.delta_ms > h100.delta_ms


def test_get_profile_picks_nearest_size_for_the_gpu():
    assert get_profile("nvidia-h100-80gb", 7.0).name == "nvidia-h100-80gb/8B"
    assert get_profile("nvidia-h100-80gb", 65).name == "nvidia-h100-80gb/70B"
    assert get_profile("nvidia-mig-1g.10gb", 2.0).model_params_b in (1.0, 3.0)


def test_get_profile_unknown_gpu_lists_what_exists():
    with pytest.raises(KeyError, match="nvidia-l4/8B"):
        get_profile("tpu-v5", 8)
    with pytest.raises(KeyError, match="unknown engine profile 'x/1B'"):
        get_profile_by_name("x/1B")


def test_get_profile_rejects_nonpositive_size():
    with pytest.raises(ValueError, match="model_params_b"):
        get_profile("nvidia-l4", 0)
