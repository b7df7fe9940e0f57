"""The FoundationModel pydantic models: the minimal resource, defaults, and every cross-field rule."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kiban.api.v1alpha1 import (
    AcceleratorSpec,
    EngineSpec,
    FoundationModel,
    FoundationModelSpec,
    FoundationModelStatus,
    KibanModel,
    ScalingSpec,
    parameter_count,
)

REPO = Path(__file__).resolve().parents[3]
INVALID = sorted(Path(__file__).with_name("invalid").glob("*.yaml"))
MINIMAL = yaml.safe_load((REPO / "examples" / "model.yaml").read_text())


def spec_with(**changes) -> dict:
    """The minimal spec with dotted-path changes applied (None deletes)."""
    spec = copy.deepcopy(MINIMAL["spec"])
    for dotted, value in changes.items():
        node = spec
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


def test_minimal_resource_parses_with_documented_defaults():
    fm = FoundationModel.from_object(MINIMAL)
    assert fm.name == "llama-8b" and fm.served_model_name == "llama-8b"
    spec = fm.spec
    assert spec.model.parameter_count == 8e9 and spec.model.scheme == "hf"
    assert spec.model.dtype == "auto" and spec.model.quantization == "none"
    assert spec.accelerator.gpus_per_replica == spec.accelerator.tensor_parallel_size == "auto"
    assert (spec.scaling.min_replicas, spec.scaling.max_replicas, spec.scaling.replicas) == (1, 4, None)
    assert spec.scaling.autoscaling is True
    assert spec.scaling.target_utilization == 0.75 and spec.scaling.peak_factor == 1.0
    assert spec.engine.gpu_memory_utilization == 0.9 and spec.engine.image is None
    assert spec.cache.type == "emptyDir" and spec.exposure.service_type == "ClusterIP"


def test_round_trip_uses_camel_case():
    dumped = FoundationModel.from_object(MINIMAL).model_dump(mode="json", exclude_none=True)
    assert dumped["apiVersion"] == "kiban.dev/v1alpha1"
    assert dumped["spec"]["scaling"]["slo"] == {"ttftP95Ms": 3000}  # examples/model.yaml
    assert "minReplicas" in dumped["spec"]["scaling"]
    assert FoundationModel.from_object(dumped).spec == FoundationModel.from_object(MINIMAL).spec


def test_python_names_are_accepted_too():
    scaling = ScalingSpec(min_replicas=0, max_replicas=2, autoscaling=False)
    assert scaling.min_replicas == 0


def test_kopf_style_mapping_bodies_are_accepted():
    class Body(dict):
        pass

    assert FoundationModel.from_object(Body(MINIMAL)).name == "llama-8b"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scaling.minReplicas": 5}, "spec.scaling.minReplicas must be less than or equal to maxReplicas"),
        ({"scaling.replicas": 9}, "spec.scaling.replicas must be within minReplicas..maxReplicas"),
        ({"scaling.slo": None}, "spec.scaling.slo is required when spec.scaling.autoscaling is true"),
        ({"scaling.slo": {}}, "spec.scaling.slo needs at least one of"),
        ({"scaling.slo": {"ttftP95Ms": 900, "ttftP99Ms": 500}}, "ttftP95Ms must not exceed ttftP99Ms"),
        ({"scaling.scaleToZeroIdleSeconds": 600}, "scaleToZeroIdleSeconds needs minReplicas 0"),
        ({"accelerator.tensorParallelSize": 3}, "tensorParallelSize must be 'auto' or a power of two"),
        ({"accelerator.gpusPerReplica": 6}, "gpusPerReplica must be 'auto' or a power of two"),
        ({"accelerator.gpusPerReplica": 2, "accelerator.tensorParallelSize": 4}, "multiple of tensorParallelSize"),
        ({"engine.extraArgs": ["--api-key", "x"]}, "'--api-key': --api-key is refused"),
        ({"engine.extraArgs": ["--port=9000"]}, "'--port=9000': --port is refused"),
        ({"engine.env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "env names must be unique"),
        ({"engine.env": [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
         "set value or valueFrom, not both"),
        ({"cache": {"type": "pvc"}}, "spec.cache.size is required when spec.cache.type is pvc"),
        ({"adapters": [{"name": "a", "uri": "hf://o/a"}, {"name": "a", "uri": "hf://o/b"}]}, "names must be unique"),
        ({"model.servedModelName": "x", "adapters": [{"name": "x", "uri": "hf://o/a"}]},
         "must differ from spec.model.servedModelName"),
        ({"model.uri": "pvc://store/m", "model.revision": "main"}, "revision applies only to hf:// models"),
        ({"exposure": {"routeHost": "a.example.com"}}, "routeHost needs spec.exposure.route true"),
        ({"accelerator.gpusPerReplica": 4, "scaling.gpuBudget": 3}, "gpuBudget must cover minReplicas"),
        # multi-node layouts (kiban.sizing.layout): impossible on any cluster, so the API server refuses them
        ({"accelerator.pipelineParallelSize": 0}, "pipelineParallelSize must be 'auto' or a number from 1 to 16"),
        ({"accelerator.nodesPerReplica": 17}, "nodesPerReplica must be 'auto' or a number from 1 to 16"),
        ({"accelerator.gpusPerReplica": 16, "accelerator.tensorParallelSize": 8,
          "accelerator.pipelineParallelSize": 4}, "pipelineParallelSize must be gpusPerReplica / tensorParallelSize"),
        ({"accelerator.pipelineParallelSize": 3, "accelerator.nodesPerReplica": 2},
         "nodesPerReplica must divide pipelineParallelSize"),
        ({"accelerator.gpusPerReplica": 8, "accelerator.nodesPerReplica": 3}, "nodesPerReplica must divide gpusPerReplica"),
        ({"accelerator.gpusPerReplica": 8, "accelerator.tensorParallelSize": 8, "accelerator.nodesPerReplica": 2},
         "nodesPerReplica must divide gpusPerReplica"),
        ({"engine.extraArgs": ["--nnodes", "2"]}, "'--nnodes': --nnodes is refused: multi-node wiring"),
        ({"engine.extraArgs": ["--master-addr=10.0.0.1"]}, "--master-addr is refused"),
        ({"engine.extraArgs": ["--headless"]}, "'--headless': --headless is refused"),
        ({"rollout": {"maxSurge": 0, "maxUnavailable": 0}}, "spec.rollout.maxSurge and spec.rollout.maxUnavailable"),
    ],
)
def test_cross_field_rules_reject_with_a_message_naming_the_field(changes, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        FoundationModelSpec.model_validate(spec_with(**changes))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model.uri": "https://huggingface.co/x/y"}, "model.uri"),
        ({"model.uri": "hf://just-a-name"}, "model.uri"),
        ({"model.parameters": "8 billion"}, "model.parameters"),
        ({"model.dtype": "float32"}, "model.dtype"),
        ({"model.quantization": "int3"}, "model.quantization"),
        ({"scaling.minReplicas": -1}, "scaling.minReplicas"),
        ({"scaling.targetUtilization": 1.0}, "scaling.targetUtilization"),
        ({"scaling.peakFactor": 0.5}, "scaling.peakFactor"),
        ({"engine.gpuMemoryUtilization": 0}, "engine.gpuMemoryUtilization"),
        ({"accelerator.tensorParallelSize": "4"}, "accelerator.tensorParallelSize"),
        ({"accelerator.profile": "NVIDIA L4"}, "accelerator.profile"),
        ({"adapters": [{"name": "a", "uri": "s3://bucket/lora"}]}, "adapters.0.uri"),
        ({"scaling.maxReplicaz": 3}, "scaling.maxReplicaz"),
    ],
)
def test_bad_fields_are_named_in_the_error(changes, field):
    with pytest.raises(ValidationError) as excinfo:
        FoundationModelSpec.model_validate(spec_with(**changes))
    locations = {".".join(str(p) for p in e["loc"]) for e in excinfo.value.errors()}
    assert any(loc.startswith(field) for loc in locations), locations


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_examples_are_rejected_with_their_expected_message(path):
    text = path.read_text()
    expected = next(line.split("expect:", 1)[1].strip() for line in text.splitlines() if "# expect:" in line)
    with pytest.raises(ValidationError) as excinfo:
        FoundationModel.from_object(yaml.safe_load(text))
    assert expected in str(excinfo.value)


def test_there_are_invalid_examples_to_reject():
    assert len(INVALID) >= 3


def test_valid_explicit_parallelism_and_manual_scaling_parse():
    spec = FoundationModelSpec.model_validate(
        spec_with(**{
            "accelerator.gpusPerReplica": 8,
            "accelerator.tensorParallelSize": 4,
            "scaling": {"minReplicas": 0, "maxReplicas": 3, "replicas": 2, "autoscaling": False},
        })
    )
    assert spec.accelerator.gpus_per_replica == 8 and spec.scaling.replicas == 2


def test_valid_multi_node_layouts_parse():
    for changes in (
        {"accelerator.gpusPerReplica": 16, "accelerator.tensorParallelSize": 8, "accelerator.pipelineParallelSize": 2,
         "accelerator.nodesPerReplica": 2},
        {"accelerator.tensorParallelSize": 8, "accelerator.pipelineParallelSize": 3, "accelerator.nodesPerReplica": 3},
        {"accelerator.nodesPerReplica": 4},
        {"accelerator.gpusPerReplica": 16, "accelerator.nodesPerReplica": 4},
        {"accelerator.pipelineParallelSize": 4, "accelerator.nodesPerReplica": 2},
    ):
        spec = FoundationModelSpec.model_validate(spec_with(**changes))
        assert spec.accelerator.nodes_per_replica == changes.get("accelerator.nodesPerReplica", "auto")


@pytest.mark.parametrize(
    ("surge", "unavailable", "replicas", "minimum", "strategy"),
    [
        (1, 0, 3, 1, (1, 0)),  # the default: one extra replica, none down
        (0, 1, 3, 1, (0, 1)),  # no spare GPUs: one replica at a time, 2 stay ready >= 1
        (0, 2, 2, 1, (0, 1)),  # never below minReplicas: only 1 may go down
        (0, 1, 1, 1, (1, 0)),  # at the minimum nothing may go down, so one replica surges instead
        (2, 5, 4, 0, (2, 4)),
    ],
)
def test_rollout_strategy_never_goes_below_the_ready_minimum(surge, unavailable, replicas, minimum, strategy):
    from kiban.api.v1alpha1 import RolloutSpec

    rollout = RolloutSpec(max_surge=surge, max_unavailable=unavailable)
    assert rollout.strategy(replicas, minimum) == strategy


def test_status_parses_conditions_and_ignores_unknown_fields():
    status = FoundationModelStatus.model_validate({
        "observedGeneration": 3,
        "replicas": 2,
        "readyReplicas": 1,
        "selector": "kiban.dev/model=llama-8b",
        "conditions": [{
            "type": "Ready", "status": "False", "reason": "ModelLoading", "message": "1/2 ready",
            "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 3,
        }],
        "resolved": {"gpusPerReplica": 1, "tensorParallelSize": 1, "accelerator": "nvidia-l4"},
        "scaling": {"desiredReplicas": 2, "reason": "TTFT p95 predicted 410 ms", "predictedTtftP95Ms": 410.0},
        "fieldFromTheFuture": True,
    })
    assert status.conditions[0].reason == "ModelLoading"
    assert status.resolved.gpus_per_replica == 1 and status.scaling.predicted_ttft_p95_ms == 410.0
    with pytest.raises(ValidationError, match="status"):
        FoundationModelStatus.model_validate({"conditions": [{"type": "Ready", "status": "Maybe",
                                                              "reason": "X", "lastTransitionTime": "t"}]})


@pytest.mark.parametrize(("text", "count"), [("8B", 8e9), ("1.5B", 1.5e9), ("500M", 5e8), ("1T", 1e12)])
def test_parameter_count(text, count):
    assert parameter_count(text) == count


def test_parameter_count_names_the_field():
    with pytest.raises(ValueError, match="spec.model.parameters"):
        parameter_count("eight")


def test_every_model_field_has_a_description():
    seen = set()

    def walk(model):
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            for arg in _model_args(field.annotation):
                walk(arg)

    walk(FoundationModelSpec)
    walk(FoundationModelStatus)
    assert {AcceleratorSpec, EngineSpec, ScalingSpec} <= seen


def _model_args(annotation):
    import typing

    if isinstance(annotation, type) and issubclass(annotation, KibanModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _model_args(arg)]
