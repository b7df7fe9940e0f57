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
    ("parameters", "profile", "quantization", "largest"),
    [
        ("70B", "nvidia-l4", Quantization.none, 4),  # 130 GiB of weights, 86 GiB on a full L4 node
        ("405B", "nvidia-h100-80gb", Quantization.none, 8),  # bf16 405B needs more than a node
        ("8B", "nvidia-mig-1g.10gb", Quantization.none, 1),  # a MIG slice cannot be tensor-parallel
    ],
)
def test_model_that_fits_no_replica_says_so_with_numbers(parameters, profile, quantization, largest):
    sizing = auto(parameters, profile, quantization)
    assert not sizing.fits
    assert sizing.reason is SizingReason.model_does_not_fit
    assert sizing.gpus_per_replica == largest
    assert f"{sizing.usable_gib:.1f} GiB" in sizing.message
    assert f"weights {sizing.weights_gib:.1f}" in sizing.message


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


def test_explicit_count_beyond_one_node_is_refused():
    sizing = auto("8B", "nvidia-l4", gpus_per_replica=8)
    assert not sizing.fits and sizing.reason is SizingReason.exceeds_node_gpus
    mig = auto("1B", "nvidia-mig-1g.10gb", tensor_parallel_size=2)
    assert not mig.fits and mig.reason is SizingReason.exceeds_node_gpus
