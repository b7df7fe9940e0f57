"""`kiban capacity plan|mmc|vllm` through the real CLI dispatcher."""

from __future__ import annotations

import json
import math

import pytest

from kiban.capacity.batching import Slo, max_arrival_rate
from kiban.capacity.cli import vllm_plan
from kiban.capacity.engine_profile import EngineProfile
from kiban.cli import main

PROFILE = EngineProfile(name="test/8B", gpu="test-gpu", model_params_b=8.0, alpha_ms=10.0, beta_ms=0.3,
                        gamma_ms=10.0, delta_ms=0.05, max_num_seqs=64, kv_cache_tokens=200_000,
                        startup_s=120.0, source="unit test")


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_gives_70_users(capsys):
    out = run_json(capsys, ["capacity", "plan", "--processing-minutes", "5", "--utilization", "0.7",
                            "--peak-factor", "2", "--hours", "10", "--access-probability", "0.3",
                            "--jobs-per-user", "2", "--json"])
    assert out["users"] == 70
    assert out["service_rate_per_hour"] == pytest.approx(12.0)
    assert out["arrival_rate_per_hour"] == pytest.approx(8.4)
    assert out["mean_wait_minutes"] == pytest.approx(11.667, abs=1e-3)


def test_plan_table_is_readable(capsys):
    assert main(["capacity", "plan", "--processing-minutes", "5", "--access-probability", "0.3",
                 "--jobs-per-user", "2", "--hours", "10", "--peak-factor", "2"]) == 0
    text = capsys.readouterr().out
    assert "users" in text and "service rate per hour" in text


def test_mmc_json(capsys):
    out = run_json(capsys, ["capacity", "mmc", "--arrival-rate", "2", "--service-rate", "1",
                            "--servers", "3", "--json"])
    assert out["wait_probability"] == pytest.approx(0.4444, abs=1e-4)
    assert out["mean_wait"] == pytest.approx(0.4444, abs=1e-4)
    assert out["utilization"] == pytest.approx(2 / 3)
    assert out["p95_wait"] == pytest.approx(math.log(0.4444444 / 0.05) / 1.0, rel=1e-5)


def test_bad_input_exits_2_naming_the_field(capsys):
    assert main(["capacity", "plan", "--processing-minutes", "5", "--utilization", "1.2",
                 "--access-probability", "0.3", "--jobs-per-user", "2"]) == 2
    assert "utilization" in capsys.readouterr().err


def test_vllm_plan_sizes_the_fleet():
    slo = Slo(ttft_ms=500)
    plan = vllm_plan(PROFILE, slo, prompt_tokens=1000, output_tokens=130, arrival_rate_rps=12.0,
                     peak_factor=2.0, gpus_per_replica=2)
    capacity = max_arrival_rate(PROFILE, 1000, 130, slo, 0.75)
    assert plan.capacity_per_replica_rps == pytest.approx(capacity)
    assert plan.replicas == math.ceil(24.0 / capacity)
    assert plan.gpus == 2 * plan.replicas and plan.gpu_hours_per_day == 48.0 * plan.replicas
    assert plan.predicted_ttft_p95_ms <= 500
    assert plan.users_per_day == math.floor(plan.replicas * capacity * 3600 * 24 / 2.0)


def test_vllm_plan_refuses_an_unattainable_slo():
    with pytest.raises(ValueError, match="unattainable"):
        vllm_plan(PROFILE, Slo(ttft_ms=5), 1000, 130, 1.0)


def test_vllm_subcommand_uses_the_published_profiles(capsys):
    out = run_json(capsys, ["capacity", "vllm", "--gpu", "nvidia-l4", "--params-b", "8", "--ttft-p95-ms", "500",
                            "--prompt-tokens", "1000", "--output-tokens", "130", "--arrival-rate", "12", "--json"])
    assert out["replicas"] >= 1 and out["gpus"] == out["replicas"]
    assert out["replicas"] * out["capacity_per_replica_rps"] >= 12.0
    assert out["predicted_ttft_p95_ms"] <= 500
