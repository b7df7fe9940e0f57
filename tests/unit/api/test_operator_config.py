"""Operator settings from the environment and accelerator profiles."""

from __future__ import annotations

import pytest

from kiban.config import BUILTIN_PROFILES, DEFAULT_VLLM_IMAGE, ConfigError, load_config

TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_defaults():
    config = load_config({})
    assert config.watch_namespace is None
    assert config.autoscale_interval_seconds == 15
    assert config.field_manager == "kiban"
    assert config.vllm_image == DEFAULT_VLLM_IMAGE == "vllm/vllm-openai:v0.33.0"
    assert config.run_as_user is None
    assert set(config.accelerator_profiles) == {p.name for p in BUILTIN_PROFILES}


@pytest.mark.parametrize(
    ("name", "selector", "resource", "memory", "per_node", "replica_limit"),
    [
        ("nvidia-h100-80gb", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "nvidia.com/gpu", 80, 8, 8),
        ("nvidia-l4", {"nvidia.com/gpu.product": "NVIDIA-L4"}, "nvidia.com/gpu", 24, 4, 4),
        ("nvidia-a100-80gb", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, "nvidia.com/gpu", 80, 8, 8),
        ("nvidia-mig-1g.10gb", {"nvidia.com/mig.strategy": "mixed"}, "nvidia.com/mig-1g.10gb", 10, 14, 1),
    ],
)
def test_builtin_profiles_match_the_simulated_nodes(name, selector, resource, memory, per_node, replica_limit):
    profile = load_config({}).profile(name)
    assert profile.node_selector == selector
    assert profile.resource_name == resource
    assert profile.gpu_memory_gib == memory
    assert profile.gpus_per_node == per_node
    assert profile.replica_gpu_limit == replica_limit
    assert list(profile.tolerations) == [TOLERATION]


def test_environment_is_typed():
    config = load_config({
        "KIBAN_WATCH_NAMESPACE": "models",
        "KIBAN_AUTOSCALE_INTERVAL_SECONDS": "5",
        "KIBAN_PROMETHEUS_URL": "http://127.0.0.1:9090",
        "KIBAN_MONITOR_LABELS": "release=prometheus, team=ml",
        "KIBAN_RUN_AS_USER": "1001",
    })
    assert config.watch_namespace == "models"
    assert config.autoscale_interval_seconds == 5.0
    assert config.prometheus_url == "http://127.0.0.1:9090"
    assert config.monitor_labels == {"release": "prometheus", "team": "ml"}
    assert config.run_as_user == 1001


@pytest.mark.parametrize("value", ["", "*"])
def test_empty_or_star_namespace_watches_all(value):
    assert load_config({"KIBAN_WATCH_NAMESPACE": value}).watch_namespace is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KIBAN_AUTOSCALE_INTERVAL_SECONDS": "soon"}, "KIBAN_AUTOSCALE_INTERVAL_SECONDS"),
        ({"KIBAN_AUTOSCALE_INTERVAL_SECONDS": "0"}, "KIBAN_AUTOSCALE_INTERVAL_SECONDS"),
        ({"KIBAN_RUN_AS_USER": "root"}, "KIBAN_RUN_AS_USER"),
        ({"KIBAN_MONITOR_LABELS": "release"}, "KIBAN_MONITOR_LABELS"),
    ],
)
def test_bad_environment_names_the_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        load_config(env)


def test_profiles_file_extends_and_overrides_builtins(tmp_path):
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "profiles:\n"
        "  amd-mi300x:\n"
        "    nodeSelector: {amd.com/gpu.product: MI300X}\n"
        "    resourceName: amd.com/gpu\n"
        "    gpuMemoryGiB: 192\n"
        "    gpusPerNode: 8\n"
        "    tolerations: [{key: amd.com/gpu, operator: Exists, effect: NoSchedule}]\n"
        "  nvidia-l4:\n"
        "    nodeSelector: {cloud.google.com/gke-accelerator: nvidia-l4}\n"
        "    resourceName: nvidia.com/gpu\n"
        "    gpuMemoryGiB: 24\n"
        "    gpusPerNode: 8\n"
    )
    config = load_config({"KIBAN_ACCELERATOR_PROFILES": str(path)})
    assert config.profile("amd-mi300x").gpu_memory_gib == 192
    assert config.profile("nvidia-l4").gpus_per_node == 8
    assert config.profile("nvidia-l4").tolerations[0]["key"] == "nvidia.com/gpu"
    assert config.profile("nvidia-h100-80gb").gpus_per_node == 8


def test_bad_profiles_file_names_the_profile_field(tmp_path):
    path = tmp_path / "profiles.yaml"
    path.write_text("profiles:\n  broken:\n    nodeSelector: {}\n    resourceName: nvidia.com/gpu\n"
                    "    gpuMemoryGiB: -1\n    gpusPerNode: 1\n")
    with pytest.raises(ConfigError, match="profiles.broken.gpuMemoryGiB"):
        load_config({"KIBAN_ACCELERATOR_PROFILES": str(path)})


def test_missing_profiles_file_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="KIBAN_ACCELERATOR_PROFILES"):
        load_config({"KIBAN_ACCELERATOR_PROFILES": str(tmp_path / "absent.yaml")})


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="spec.accelerator.profile: unknown profile 'tpu'.*nvidia-l4"):
        load_config({}).profile("tpu")
