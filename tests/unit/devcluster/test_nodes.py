"""The simulated GPU nodes carry exactly the labels, resources and taints the operator selects on."""

import pytest

from kiban_dev.devcluster.nodes import DEFAULT_POOL, build_node, build_pool

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def test_h100_node_is_labelled_like_gpu_feature_discovery():
    node = build_node("h100", 0)
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["nvidia.com/gpu.present"] == "true"
    assert node["status"]["capacity"] == {"nvidia.com/gpu": "8", "cpu": "192", "memory": "2Ti", "pods": "110"}
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    assert node["spec"]["taints"] == [GPU_TAINT]


def test_l4_node_has_four_gpus():
    node = build_node("l4", 2)
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert labels["nvidia.com/gpu.memory"] == "23034"
    assert labels["nvidia.com/gpu.count"] == "4"
    capacity = node["status"]["capacity"]
    assert (capacity["nvidia.com/gpu"], capacity["cpu"], capacity["memory"]) == ("4", "48", "192Gi")
    assert node["spec"]["taints"] == [GPU_TAINT]


def test_mig_node_offers_mig_slices_and_no_whole_gpus():
    node = build_node("a100-mig", 0)
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/mig.strategy"] == "mixed"
    assert labels["nvidia.com/mig-1g.10gb.count"] == "14"
    assert labels["nvidia.com/mig-1g.10gb.memory"] == "9728"
    assert node["status"]["capacity"]["nvidia.com/mig-1g.10gb"] == "14"
    assert "nvidia.com/gpu" not in node["status"]["capacity"]
    assert node["spec"]["taints"] == [GPU_TAINT]


def test_cpu_node_is_untainted_and_has_no_gpu_labels():
    node = build_node("cpu", 0)
    assert "taints" not in node["spec"]
    assert not any(key.startswith("nvidia.com/") for key in node["metadata"]["labels"])
    assert not any(key.startswith("nvidia.com/") for key in node["status"]["capacity"])


@pytest.mark.parametrize("kind", ["h100", "l4", "a100-mig", "cpu"])
def test_every_node_is_managed_by_kwok(kind):
    node = build_node(kind, 0)
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["metadata"]["labels"]["type"] == "kwok"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == node["metadata"]["name"]


def test_default_pool_is_four_h100_three_l4_one_mig_one_cpu():
    """Four H100 nodes: two LeaderWorkerSet groups of two (a 405B bf16 replica each)."""
    names = [n["metadata"]["name"] for n in build_pool()]
    assert DEFAULT_POOL == {"h100": 4, "l4": 3, "a100-mig": 1, "cpu": 1}
    assert names == [
        "kiban-h100-0", "kiban-h100-1", "kiban-h100-2", "kiban-h100-3",
        "kiban-l4-0", "kiban-l4-1", "kiban-l4-2",
        "kiban-a100-mig-0", "kiban-cpu-0",
    ]


def test_pool_counts_are_configurable_and_names_unique():
    nodes = build_pool({"h100": 5, "cpu": 2})
    names = [n["metadata"]["name"] for n in nodes]
    assert len(names) == len(set(names)) == 7
    assert sum(n["metadata"]["labels"]["kiban.dev/node-kind"] == "h100" for n in nodes) == 5


def test_builders_return_independent_objects():
    first, second = build_node("h100", 0), build_node("h100", 1)
    first["spec"]["taints"].append({"key": "x", "effect": "NoExecute"})
    first["status"]["capacity"]["nvidia.com/gpu"] = "0"
    assert second["spec"]["taints"] == [GPU_TAINT]
    assert build_node("h100", 0)["status"]["capacity"]["nvidia.com/gpu"] == "8"


@pytest.mark.parametrize("bad, field", [({"tpu": 1}, "tpu"), ({"h100": -1}, "h100"), ({"l4": "2"}, "l4")])
def test_bad_pool_names_the_offending_field(bad, field):
    with pytest.raises(ValueError, match=field):
        build_pool(bad)


def test_empty_pool_is_refused():
    with pytest.raises(ValueError, match="empty"):
        build_pool({"h100": 0})
