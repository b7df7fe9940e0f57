"""A replica that spans nodes counts as all of its GPUs in the autoscaler's GPU budget."""

from __future__ import annotations

from kiban.api.v1alpha1 import FoundationModel
from kiban.autoscale.model_pass import decide_strictest, engine_profile_for, scaling_configs, seed_state
from kiban.autoscale.policy import Observation
from kiban.config import load_config
from kiban.sizing import resolve_sizing

# Llama-3.1-405B in bf16: 405e9 x 2 bytes = 754.4 GiB of weights, more than the 8 x 80 x 0.9 =
# 576 GiB of one H100 node; two nodes (1152 GiB) hold it with the KV reserve: 2 x 8 = 16 GPUs.
GPUS_PER_405B_REPLICA = 16


def big(budget: int) -> FoundationModel:
    return FoundationModel.from_object({
        "apiVersion": "kiban.dev/v1alpha1", "kind": "FoundationModel",
        "metadata": {"name": "llama-405b", "namespace": "ns", "generation": 1},
        "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-405B-Instruct", "parameters": "405B",
                           "dtype": "bfloat16"},
                 "accelerator": {"profile": "nvidia-h100-80gb"},
                 "scaling": {"minReplicas": 1, "maxReplicas": 8, "gpuBudget": budget, "slo": {"ttftP95Ms": 4000}}},
    })


def test_the_gpu_budget_counts_16_gpus_per_405b_replica():
    fm = big(budget=40)
    sizing = resolve_sizing(fm.spec, load_config({}).profile("nvidia-h100-80gb"))
    assert (sizing.gpus_per_replica, sizing.nodes_per_replica) == (GPUS_PER_405B_REPLICA, 2)
    (config,) = scaling_configs(fm, sizing.gpus_per_replica)
    assert config.gpus_per_replica == GPUS_PER_405B_REPLICA
    profile = engine_profile_for(fm)
    assert profile.name == "nvidia-h100-80gb/405B"
    heavy = Observation(time_s=0.0, metrics_available=True, arrival_rate_rps=50.0, mean_prompt_tokens=1024.0,
                        mean_output_tokens=256.0, running=64.0, waiting=40.0, current_replicas=1)
    decision, _ = decide_strictest(heavy, (config,), seed_state(0.0, 1), profile)
    assert decision.limited == "GpuBudget"
    assert decision.replicas == 40 // GPUS_PER_405B_REPLICA  # 2, not the 40 a 1-GPU count would allow
    assert f"40 GPUs ({GPUS_PER_405B_REPLICA} per replica)" in decision.reason
