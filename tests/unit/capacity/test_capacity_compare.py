"""`kiban capacity compare`: one pair worked by hand, the reasons a pair cannot serve, the CLI."""

from __future__ import annotations

import json
import math

import pytest

from kiban.capacity.batching import Slo
from kiban.capacity.cli import draw_compare_chart, parse_mix, parse_model
from kiban.capacity.compare import AcceleratorCandidate, Load, ModelCandidate, compare, compare_pair, load_from_mix
from kiban.cli import main as kiban_main
from kiban.config import BUILTIN_PROFILES

PROFILES = {p.name: p for p in BUILTIN_PROFILES}
L4 = AcceleratorCandidate(PROFILES["nvidia-l4"], 0.80)
LOOSE = Slo(ttft_ms=60_000)


def test_a_model_bigger_than_a_node_is_priced_across_nodes():
    """70B bf16 needs 130.4 x 1.25 + 1 = 164 GiB, more than one L4 node (4 x 24 x 0.9 = 86.4 GiB):
    two nodes, tensor parallel 4 x pipeline parallel 2 = 8 GPUs per replica; the KV cache counts all
    eight GPUs: (8 x 24e9 x 0.9 - 140e9) / (2 x 80 layers x 8 heads x 128 x 2 B = 327680 B) = 100097."""
    result = compare_pair(ModelCandidate("llama-70b", 70.0), L4, Load(1.0, 512, 128), LOOSE)
    assert result.feasible, result.reason
    assert result.gpus_per_replica == 8 and result.gpus == 8 * result.replicas
    assert result.engine_profile.kv_cache_tokens == 100097
    assert result.engine_profile.name == "nvidia-l4/70B-tp4-pp2"


def test_llama_8b_on_l4_by_hand():
    """8B parameters, bf16, on NVIDIA L4 at $0.80/GPU-hour; 2 req/s of 512 prompt / 128 output tokens.

    Sizing (kiban/sizing/gpu.py rule, gpuMemoryUtilization 0.9, L4 = 24 GiB):
      weights 8e9 x 2 B = 16e9 B = 14.90 GiB; need 14.90 x 1.25 + 1 = 19.63 GiB <= 24 x 0.9 = 21.6 -> 1 GPU.
    Engine profile (datasheet L4: 24 GB, 300 GB/s, 121 TFLOPS bf16; MBU 0.77, MFU 0.5; Llama-3.1-8B
    KV: 2 x 32 layers x 8 heads x 128 x 2 B = 131072 B/token; beta 0.404 ms at 1555 GB/s):
      alpha = gamma = 16e9 / (300e9 x 0.77) = 69.264 ms; beta = 0.404 x 1555 / 300 = 2.0941 ms;
      delta = 2 x 8e9 / (121e12 x 0.5) = 0.26446 ms/token;
      KV tokens = (24e9 x 0.9 - 16e9) / 131072 = 42724.6 -> 42724.
    Capacity with a loose SLO (the utilisation cap binds):
      B = min(256, 42724 // 640) = 66;
      mu(66) = 66 / (69.264 + 0.26446 x 512 x 66 + 127 x (69.264 + 2.0941 x 66)) ms
             = 66 / (9005.87 + 127 x 207.475) ms = 66 / 35355.2 ms = 1.86678 req/s;
      one replica takes 0.75 x 1.86678 = 1.40009 req/s -> ceil(2 / 1.40009) = 2 replicas.
    Cost: 2 GPUs x 24 h = 48 GPU-h/day x $0.80 = $38.40/day; output 2 x 128 x 86400 = 22.1184 M
      tokens/day -> $38.40 / 22.1184 = $1.7361 per million output tokens.
    """
    result = compare_pair(ModelCandidate("llama-8b", 8.0), L4, Load(2.0, 512, 128), LOOSE)
    assert result.feasible, result.reason
    assert result.gpus_per_replica == 1
    profile = result.engine_profile
    assert (profile.alpha_ms, profile.beta_ms, profile.delta_ms, profile.kv_cache_tokens) == \
        (pytest.approx(69.264, abs=1e-3), pytest.approx(2.0941, abs=1e-4), pytest.approx(0.26446, abs=1e-5), 42724)
    assert result.capacity_per_replica_rps == pytest.approx(1.40009, rel=2e-4)
    assert result.replicas == 2 and result.gpus == 2
    assert result.gpu_hours_per_day == 48
    assert result.cost_per_day == pytest.approx(38.40)
    assert result.cost_per_million_output_tokens == pytest.approx(1.7361, rel=1e-4)
    assert result.predicted_ttft_p95_ms is not None and result.predicted_ttft_p95_ms < 60_000


def test_pairs_that_cannot_serve_say_why():
    # 405e9 x 2 B = 754.4 GiB of weights, x 1.25 + 1 = 944 GiB and more; four L4 nodes of 4 x 24 GiB
    # x 0.9 hold 345.6 GiB: no layout up to the default 4 nodes fits
    big = compare_pair(ModelCandidate("llama-405b", 405.0), L4, Load(1.0, 512, 128), LOOSE)
    assert not big.feasible and big.reason.startswith("ModelDoesNotFit") and "345.6 GiB" in big.reason
    strict = compare_pair(ModelCandidate("llama-8b", 8.0), L4, Load(1.0, 4096, 128), Slo(ttft_ms=100))
    assert not strict.feasible and "unattainable on nvidia-l4/8B even unloaded" in strict.reason
    # a lone 4096-token prompt prefills in about 4096 x 0.26446 + 2 x 69.264 ms > 1 s
    assert "TTFT p95 1" in strict.reason


def test_quantized_weights_are_smaller_and_faster():
    bf16 = compare_pair(ModelCandidate("m", 8.0), L4, Load(2.0, 512, 128), LOOSE).engine_profile
    fp8 = compare_pair(parse_model("m=8B:fp8"), L4, Load(2.0, 512, 128), LOOSE).engine_profile
    assert fp8.alpha_ms == pytest.approx(bf16.alpha_ms / 2, rel=1e-3)
    assert fp8.kv_cache_tokens > bf16.kv_cache_tokens


def test_cheapest_feasible_first_then_the_rest():
    h100 = AcceleratorCandidate(PROFILES["nvidia-h100-80gb"], 3.5)
    # 405B cannot fit 4 L4 nodes (345.6 GiB) but fits 2 H100 nodes: one infeasible pair, listed last
    results = compare([ModelCandidate("a", 8.0), ModelCandidate("b", 405.0)], [L4, h100], Load(2.0, 512, 128), LOOSE)
    feasible = [r for r in results if r.feasible]
    assert [r.cost_per_day for r in feasible] == sorted(r.cost_per_day for r in feasible)
    assert not results[-1].feasible


def test_a_mix_gives_weighted_means_and_a_prompt_shape():
    load = load_from_mix(3.0, parse_mix("512:128:0.75,2048:256:0.25"))
    assert load.prompt_tokens == pytest.approx(896) and load.output_tokens == pytest.approx(160)
    assert load.prompt_mix == ((512.0, 0.75), (2048.0, 0.25))


def test_cli_json_and_bad_input(capsys, tmp_path):
    args = ["capacity", "compare", "--model", "llama-8b=8B", "--gpu", "nvidia-l4=0.80", "--rate", "2",
            "--prompt-tokens", "512", "--output-tokens", "128", "--ttft-p95-ms", "60000", "--json"]
    assert kiban_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    (pair,) = report["pairs"]
    assert pair["replicas"] == 2 and math.isclose(pair["cost_per_day"], 38.4)
    assert kiban_main(["capacity", "compare", "--model", "x=8B", "--gpu", "nvidia-zz=1", "--rate", "1",
                       "--prompt-tokens", "1", "--output-tokens", "1", "--ttft-p95-ms", "100"]) == 2
    assert "unknown accelerator profile 'nvidia-zz'" in capsys.readouterr().err
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0000000,100,10\n"
                     "2023-11-16 18:15:47.0000000,300,30\n2023-11-16 18:15:48.0000000,200,20\n")
    assert kiban_main(["capacity", "compare", "--model", "m=8B", "--gpu", "nvidia-l4=1", "--trace", str(trace),
                       "--ttft-p95-ms", "60000", "--json"]) == 0
    load = json.loads(capsys.readouterr().out)["load"]
    assert load["rate_rps"] == pytest.approx(1.0) and load["mean_prompt_tokens"] == pytest.approx(200)


def test_chart_is_a_png_when_matplotlib_is_there(tmp_path):
    results = compare([ModelCandidate("a", 8.0)], [L4], Load(2.0, 512, 128), LOOSE)
    path = draw_compare_chart(results, LOOSE, str(tmp_path / "c.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
