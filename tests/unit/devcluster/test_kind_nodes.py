"""kind nodes are dressed with exactly the simulated kinds' labels, taints and capacities."""

import json

import pytest

from kiban_dev.devcluster.kind_nodes import kubectl_commands, parse_assignments


def test_h100_commands_label_taint_and_advertise_gpus():
    label, taint, patch = kubectl_commands("kiban-worker", "h100")
    assert label[:4] == ["label", "node", "kiban-worker", "--overwrite"]
    assert "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3" in label
    assert "kiban.dev/node-kind=h100" in label
    assert taint == ["taint", "node", "kiban-worker", "--overwrite", "nvidia.com/gpu=present:NoSchedule"]
    assert patch[:5] == ["patch", "node", "kiban-worker", "--subresource=status", "--type=json"]
    ops = json.loads(patch[-1])
    assert {"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "8"} in ops
    assert {"op": "add", "path": "/status/allocatable/nvidia.com~1gpu", "value": "8"} in ops
    assert not any(op["path"].endswith(("/cpu", "/memory", "/pods")) for op in ops)


def test_mig_node_advertises_mig_slices():
    ops = json.loads(kubectl_commands("w", "a100-mig")[-1][-1])
    assert {op["path"] for op in ops} == {
        "/status/capacity/nvidia.com~1mig-1g.10gb", "/status/allocatable/nvidia.com~1mig-1g.10gb"}


def test_cpu_node_gets_only_its_kind_label():
    assert kubectl_commands("w", "cpu") == [["label", "node", "w", "--overwrite", "kiban.dev/node-kind=cpu"]]


def test_assignments_name_the_bad_argument():
    assert parse_assignments(["a=h100", "b=cpu"]) == [("a", "h100"), ("b", "cpu")]
    with pytest.raises(ValueError, match="'a=tpu'"):
        parse_assignments(["a=tpu"])
    with pytest.raises(ValueError, match="'a'"):
        parse_assignments(["a"])
