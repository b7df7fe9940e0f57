"""The layouts a spec allows, in the order the sizing tries them (kiban.sizing.layout)."""

from __future__ import annotations

from kiban.config import BUILTIN_PROFILES
from kiban.sizing.layout import Layout, Pins, candidate_layouts

PROFILES = {p.name: p for p in BUILTIN_PROFILES}
H100, L4, MIG = PROFILES["nvidia-h100-80gb"], PROFILES["nvidia-l4"], PROFILES["nvidia-mig-1g.10gb"]


def shapes(layouts):
    return [(l.tensor_parallel, l.pipeline_parallel, l.nodes) for l in layouts]


def test_auto_tries_one_node_in_powers_of_two_then_whole_stages_per_node():
    got = shapes(candidate_layouts(Pins(), H100, max_nodes=2))
    assert got[:4] == [(1, 1, 1), (2, 1, 1), (4, 1, 1), (8, 1, 1)]
    assert got[4:] == [(1, 2, 2), (2, 2, 2), (4, 2, 2), (8, 2, 2)]  # one stage per node, TP <= a node


def test_fewest_nodes_then_fewest_gpus_then_widest_tensor_parallel():
    layouts = candidate_layouts(Pins(gpus=8), H100, max_nodes=2)
    assert shapes(layouts)[:4] == [(8, 1, 1), (4, 2, 1), (2, 4, 1), (1, 8, 1)]
    assert all(l.gpus == 8 for l in layouts)


def test_every_layout_keeps_tensor_parallel_within_a_node_and_whole_stages_per_node():
    for pins in (Pins(), Pins(tensor_parallel=4), Pins(pipeline_parallel=4), Pins(gpus=16), Pins(nodes=3)):
        for profile in (H100, L4):
            for layout in candidate_layouts(pins, profile, max_nodes=4):
                assert layout.tensor_parallel <= profile.gpus_per_node
                assert layout.pipeline_parallel % layout.nodes == 0
                assert layout.gpus_per_node <= profile.gpus_per_node
                assert layout.nodes <= 4


def test_pins_are_respected():
    assert {l.tensor_parallel for l in candidate_layouts(Pins(tensor_parallel=4), H100)} == {4}
    assert {l.nodes for l in candidate_layouts(Pins(nodes=3), H100)} == {3}
    assert {l.pipeline_parallel for l in candidate_layouts(Pins(pipeline_parallel=2), L4)} == {2}
    assert shapes(candidate_layouts(Pins(gpus=16, tensor_parallel=8, pipeline_parallel=2, nodes=2), H100)) == [(8, 2, 2)]


def test_impossible_pins_have_no_layout():
    assert candidate_layouts(Pins(tensor_parallel=8), L4) == []  # an L4 node has 4 GPUs
    assert candidate_layouts(Pins(nodes=5), H100, max_nodes=4) == []  # the operator's limit
    assert candidate_layouts(Pins(gpus=64), H100, max_nodes=4) == []  # 8 nodes' worth
    assert candidate_layouts(Pins(nodes=2), MIG) == []  # a MIG slice is the whole replica
    assert shapes(candidate_layouts(Pins(), MIG)) == [(1, 1, 1)]


def test_layout_arithmetic():
    layout = Layout(8, 2, 2)
    assert (layout.gpus, layout.gpus_per_node) == (16, 8)
    assert Pins(gpus=16, nodes=2).describe() == "gpusPerReplica 16, nodesPerReplica 2"
