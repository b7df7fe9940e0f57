"""GPU sizing on small and large models across the L4, A100, H100 and MIG profiles."""

from __future__ import annotations

import pytest

from kiban.api.v1alpha1 import Dtype, Quantization, parameter_count
from kiban.config import BUILTIN_PROFILES
from kiban.sizing.gpu import SizingReason, bytes_per_parameter, required_gib, size_gpus, usable_gib

PROFILES = {p.name: p for p in BUILTIN_PROFILES}


def auto(parameters: str, profile: str, quantization: Quantization = Quantization.none, **kwargs):
    return size_gpus(
        parameters=parameter_count(parameters),
        dtype=Dtype.bfloat16,
        quantization=quantization,
        profile=PROFILES[profile],
        gpu_memory_utilization=0.9,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("parameters", "profile", "quantization", "gpus"),
    [
        ("8B", "nvidia-l4", Quantization.none, 1),  # 14.9 GiB + 3.7 reserve + 1 = 19.6 <= 21.6
        ("8B", "nvidia-h100-80gb", Quantization.none, 1),
        ("13B", "nvidia-l4", Quantization.none, 2),  # 31.3 GiB > 21.6 on one L4
        ("70B", "nvidia-h100-80gb", Quantization.none, 4),  # 165 GiB > 144 on two
        ("70B", "nvidia-a100-80gb", Quantization.none, 4),
        ("70B", "nvidia-l4", Quantization.awq, 2),  # 32.6 GiB weights at 4 bits
        ("405B", "nvidia-h100-80gb", Quantization.fp8, 8),  # 475 GiB > 288 on four
        ("1B", "nvidia-mig-1g.10gb", Quantization.none, 1),
        ("3B", "nvidia-mig-1g.10gb", Quantization.none, 1),
    ],
)
def test_auto_sizing_picks_smallest_power_of_two_that_fits(parameters, profile, quantization, gpus):
    sizing = auto(parameters, profile, quantization)
    assert sizing.fits, sizing.message
    assert sizing.reason is SizingReason.auto_sized
    assert (sizing.gpus_per_replica, sizing.tensor_parallel_size, sizing.pipeline_parallel_size) == (gpus, gpus, 1)
    assert sizing.required_gib <= sizing.usable_gib
    if gpus > 1:  # and half as many would not have been enough
        assert required_gib(sizing.weights_gib, gpus // 2) > usable_gib(gpus // 2, PROFILES[profile].gpu_memory_gib, 0.9)


@pytest.mark.parametrize(
    ("parameters", "profile", "quantization", "largest", "nodes"),
    [
        # 2T bf16: 3725.3 GiB of weights; 4 H100 nodes give 4 x 8 x 80 x 0.9 = 2304 GiB
        ("2T", "nvidia-h100-80gb", Quantization.none, 32, 4),
        # 405B bf16 on L4: 754.4 GiB of weights; 4 L4 nodes give 4 x 4 x 24 x 0.9 = 345.6 GiB
        ("405B", "nvidia-l4", Quantization.none, 16, 4),
        ("8B", "nvidia-mig-1g.10gb", Quantization.none, 1, 1),  # a MIG slice cannot be combined at all
    ],
)
def test_model_that_fits_no_replica_says_so_with_numbers(parameters, profile, quantization, largest, nodes):
    sizing = auto(parameters, profile, quantization)
    assert not sizing.fits
    assert sizing.reason is SizingReason.model_does_not_fit
    assert (sizing.gpus_per_replica, sizing.nodes_per_replica) == (largest, nodes)
    assert f"{sizing.usable_gib:.1f} GiB" in sizing.message
    assert f"weights {sizing.weights_gib:.1f}" in sizing.message
    if nodes > 1:
        assert f"{nodes} nodes x " in sizing.message and "KIBAN_MAX_NODES_PER_REPLICA" in sizing.message


def test_2t_on_h100_names_the_arithmetic_computed_by_hand():
    sizing = auto("2T", "nvidia-h100-80gb")
    # weights 2e12 x 2 bytes / 2^30 = 3725.29 GiB; + a quarter KV reserve + 1 GiB x 32 GPUs = 4688.6 GiB
    assert "needs 4688.6 GiB" in sizing.message
    assert "4 nodes x 8 x 80 GiB x 0.9 = 2304.0 GiB" in sizing.message


@pytest.mark.parametrize(
    ("parameters", "profile", "quantization", "layout"),
    [
        # 405B bf16 = 754.4 GiB; one H100 node holds 576 GiB, two 1152 >= 754.4 x 1.25 + 16 = 959 GiB
        ("405B", "nvidia-h100-80gb", Quantization.none, (16, 8, 2, 2)),
        ("405B", "nvidia-a100-80gb", Quantization.none, (16, 8, 2, 2)),
        # 70B bf16 = 130.4 GiB: one L4 node holds 86.4 GiB, two 172.8 >= 163 + 8 = 171 GiB
        ("70B", "nvidia-l4", Quantization.none, (8, 4, 2, 2)),
        # 671B fp8 (DeepSeek-V3 class) = 624.9 GiB: two H100 nodes hold 1152 >= 781 + 16
        ("671B", "nvidia-h100-80gb", Quantization.fp8, (16, 8, 2, 2)),
        # 800B bf16 = 1490.1 GiB: x 1.25 + 24 = 1886.6 > 1728 on 3 nodes; 4 nodes: 1894.6 <= 2304
        ("800B", "nvidia-h100-80gb", Quantization.none, (32, 8, 4, 4)),
        # 600B bf16 = 1117.6 GiB x 1.25 + 24 = 1421 <= 1728 on 3 nodes (> 1152 on 2)
        ("600B", "nvidia-h100-80gb", Quantization.none, (24, 8, 3, 3)),
    ],
)
def test_models_bigger_than_a_node_take_whole_nodes_with_one_stage_each(parameters, profile, quantization, layout):
    sizing = auto(parameters, profile, quantization)
    assert sizing.fits and sizing.reason is SizingReason.auto_sized, sizing.message
    got = (sizing.gpus_per_replica, sizing.tensor_parallel_size, sizing.pipeline_parallel_size, sizing.nodes_per_replica)
    assert got == layout
    assert sizing.gpus_per_node == PROFILES[profile].gpus_per_node
    assert sizing.multi_node
    assert f"pipeline parallel {layout[2]} across {layout[3]} nodes" in sizing.message
    # one node fewer would not have held it
    fewer = size_gpus(parameters=parameter_count(parameters), dtype=Dtype.bfloat16, quantization=quantization,
                      profile=PROFILES[profile], gpu_memory_utilization=0.9, max_nodes=layout[3] - 1)
    assert not fewer.fits


def test_max_nodes_is_the_operators_limit():
    assert not auto("405B", "nvidia-h100-80gb", max_nodes=1).fits
    assert auto("600B", "nvidia-h100-80gb", max_nodes=3).nodes_per_replica == 3
    assert not auto("800B", "nvidia-h100-80gb", max_nodes=3).fits


def test_bytes_per_parameter_by_dtype_and_quantization():
    assert bytes_per_parameter(Dtype.auto, Quantization.none) == 2
    assert bytes_per_parameter(Dtype.float16, Quantization.none) == 2
    assert bytes_per_parameter(Dtype.bfloat16, Quantization.fp8) == 1
    assert bytes_per_parameter(Dtype.auto, Quantization.awq) == 0.5
    assert bytes_per_parameter(Dtype.auto, Quantization.gptq) == 0.5


def test_lower_memory_utilization_can_need_more_gpus():
    generous = auto("8B", "nvidia-l4")
    tight = size_gpus(
        parameters=8e9, dtype=Dtype.bfloat16, quantization=Quantization.none,
        profile=PROFILES["nvidia-l4"], gpu_memory_utilization=0.8,
    )
    assert (generous.gpus_per_replica, tight.gpus_per_replica) == (1, 2)


def test_unknown_parameters_default_to_one_gpu():
    sizing = size_gpus(
        parameters=None, dtype=Dtype.auto, quantization=Quantization.none,
        profile=PROFILES["nvidia-h100-80gb"], gpu_memory_utilization=0.9,
    )
    assert (sizing.gpus_per_replica, sizing.fits, sizing.reason) == (1, True, SizingReason.parameters_unknown)
    assert sizing.weights_gib is None


def test_explicit_tensor_parallel_sets_gpus():
    sizing = auto("70B", "nvidia-h100-80gb", tensor_parallel_size=8)
    assert (sizing.gpus_per_replica, sizing.tensor_parallel_size, sizing.reason) == (8, 8, SizingReason.user_specified)


def test_more_gpus_than_tensor_parallel_adds_pipeline_stages():
    sizing = auto("70B", "nvidia-h100-80gb", gpus_per_replica=8, tensor_parallel_size=4)
    assert (sizing.tensor_parallel_size, sizing.pipeline_parallel_size) == (4, 2)


def test_explicit_count_below_reserve_is_allowed_with_a_note():
    sizing = auto("70B", "nvidia-h100-80gb", gpus_per_replica=2)  # 130 GiB weights in 144 GiB usable
    assert sizing.fits and sizing.reason is SizingReason.user_specified
    assert "below" in sizing.message


def test_explicit_count_too_small_for_the_weights_does_not_fit():
    sizing = auto("70B", "nvidia-h100-80gb", gpus_per_replica=1)
    assert not sizing.fits and sizing.reason is SizingReason.model_does_not_fit


def test_explicit_count_beyond_one_node_spans_nodes():
    sizing = auto("8B", "nvidia-l4", gpus_per_replica=8)  # two L4 nodes of 4
    assert sizing.fits and sizing.reason is SizingReason.user_specified
    assert (sizing.tensor_parallel_size, sizing.pipeline_parallel_size, sizing.nodes_per_replica) == (4, 2, 2)


def test_tensor_parallel_wider_than_a_node_or_a_mig_slice_is_refused():
    mig = auto("1B", "nvidia-mig-1g.10gb", tensor_parallel_size=2)
    assert not mig.fits and mig.reason is SizingReason.exceeds_node_gpus
    wide = auto("405B", "nvidia-l4", tensor_parallel_size=8)  # an L4 node has 4 GPUs
    assert not wide.fits and wide.reason is SizingReason.exceeds_node_gpus
    assert "tensor parallel 8" in wide.message
    two = auto("1B", "nvidia-mig-1g.10gb", gpus_per_replica=2)
    assert not two.fits and two.reason is SizingReason.exceeds_node_gpus


def test_pinned_tensor_parallel_adds_pipeline_stages_until_the_model_fits():
    # 405B with TP 8: one node (8 GPUs, 576 GiB) is too small; two stages on two nodes hold it
    sizing = auto("405B", "nvidia-h100-80gb", tensor_parallel_size=8)
    assert sizing.fits and sizing.reason is SizingReason.user_specified
    assert (sizing.gpus_per_replica, sizing.pipeline_parallel_size, sizing.nodes_per_replica) == (16, 2, 2)
    # 70B with TP 4 fits one stage on one node, as before
    assert auto("70B", "nvidia-h100-80gb", tensor_parallel_size=4).gpus_per_replica == 4


def test_pinned_pipeline_parallel_sizes_tensor_parallel_and_nodes():
    sizing = auto("405B", "nvidia-h100-80gb", pipeline_parallel_size=2)
    assert (sizing.tensor_parallel_size, sizing.nodes_per_replica) == (8, 2)
    # 70B with 2 stages: 4 GPUs (TP 2) on one node hold 130.4 x 1.25 + 4 = 167 <= 288 GiB
    small = auto("70B", "nvidia-h100-80gb", pipeline_parallel_size=2)
    assert (small.gpus_per_replica, small.tensor_parallel_size, small.nodes_per_replica) == (4, 2, 1)


def test_pinned_nodes_give_one_stage_per_node():
    sizing = auto("405B", "nvidia-h100-80gb", nodes_per_replica=4)
    # fewest GPUs over 4 nodes that hold 959 GiB: TP 4 x 4 stages = 16 GPUs (1152 GiB)
    assert (sizing.gpus_per_replica, sizing.tensor_parallel_size, sizing.pipeline_parallel_size) == (16, 4, 4)
    assert sizing.nodes_per_replica == 4 and sizing.gpus_per_node == 4


def test_fully_pinned_layout_is_honoured():
    sizing = auto("405B", "nvidia-h100-80gb", gpus_per_replica=16, tensor_parallel_size=8,
                  pipeline_parallel_size=2, nodes_per_replica=2)
    assert sizing.fits and (sizing.gpus_per_replica, sizing.nodes_per_replica) == (16, 2)


def test_more_nodes_than_the_operator_allows_are_refused_naming_the_setting():
    sizing = auto("405B", "nvidia-h100-80gb", nodes_per_replica=6)
    assert not sizing.fits and sizing.reason is SizingReason.exceeds_node_limit
    assert "KIBAN_MAX_NODES_PER_REPLICA" in sizing.message and "nodesPerReplica 6" in sizing.message


def test_pinned_layout_too_small_for_the_weights_does_not_fit():
    sizing = auto("405B", "nvidia-h100-80gb", gpus_per_replica=8)
    assert not sizing.fits and sizing.reason is SizingReason.model_does_not_fit
    assert "754.4 GiB" in sizing.message and "576.0 GiB" in sizing.message


@pytest.mark.parametrize("parameters", ["500M", "8B", "13B", "70B", "180B", "405B", "671B", "1T"])
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_chosen_layout_obeys_the_rules(parameters, profile):
    """TP a power of two within a node, whole stages per node, never more than a node's GPUs per pod."""
    sizing = auto(parameters, profile)
    p = PROFILES[profile]
    assert sizing.gpus_per_replica == sizing.tensor_parallel_size * sizing.pipeline_parallel_size
    assert sizing.tensor_parallel_size & (sizing.tensor_parallel_size - 1) == 0
    assert sizing.pipeline_parallel_size % sizing.nodes_per_replica == 0
    assert sizing.gpus_per_node <= p.gpus_per_node
    assert 1 <= sizing.nodes_per_replica <= 4
    if sizing.fits:
        assert sizing.required_gib <= sizing.usable_gib
