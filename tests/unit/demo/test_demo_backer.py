"""The pod backer's pure half: which pods get a simulator, with which arguments and labels.

Pods are built from the operator's own Deployment builder, so a change to the pod template that
the backer depends on (annotations, vLLM args) fails here first.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.deployment import build_deployment
from kiban.config import load_config
from kiban.sizing.gpu import resolve_sizing
from kiban_dev.demo.backer import (
    BackingError,
    arg_value,
    backing_for_pod,
    file_sd_document,
    pod_is_serving,
    profile_name_for,
)

REPO = Path(__file__).resolve().parents[3]


def engine_pod(example: str = "model.yaml", **spec_changes) -> dict:
    """A Running pod as the ReplicaSet would create it from the operator's Deployment."""
    body = yaml.safe_load((REPO / "examples" / example).read_text())
    body["metadata"] = {**body["metadata"], "namespace": "ns1", "uid": "fm-uid"}
    for key, value in spec_changes.items():
        body["spec"][key] = {**body["spec"].get(key, {}), **value}
    fm = FoundationModel.from_object(body)
    config = load_config({})
    deployment = build_deployment(fm, config, resolve_sizing(fm.spec, config.profile(fm.spec.accelerator.profile)))
    template = copy.deepcopy(deployment["spec"]["template"])
    metadata = {**template["metadata"], "name": f"{fm.name}-abc-x1", "namespace": "ns1", "uid": "pod-uid"}
    return {"metadata": metadata, "spec": template["spec"], "status": {"phase": "Running", "podIP": "127.64.0.7"}}


def test_example_model_pod_is_backed_by_the_l4_8b_profile():
    backing = backing_for_pod(engine_pod())
    assert backing.engine_profile == "nvidia-l4/8B"
    assert backing.served_model_name == "llama-8b"
    assert backing.foundation_model == "llama-8b"
    assert (backing.namespace, backing.pod, backing.uid) == ("ns1", "llama-8b-abc-x1", "pod-uid")
    assert backing.max_num_seqs is None


def test_max_num_seqs_comes_from_the_vllm_args():
    backing = backing_for_pod(engine_pod(engine={"maxNumSeqs": 12}))
    assert backing.max_num_seqs == 12


def test_file_sd_document_carries_the_pod_identity():
    backing = backing_for_pod(engine_pod())
    assert file_sd_document(backing, "127.0.0.1:4000") == [{
        "targets": ["127.0.0.1:4000"],
        "labels": {"namespace": "ns1", "pod": "llama-8b-abc-x1", "foundationmodel": "llama-8b",
                   "model_name": "llama-8b"},
    }]


@pytest.mark.parametrize("annotation", ["kiban.dev/accelerator-profile", "kiban.dev/model-parameters"])
def test_missing_annotation_is_named(annotation):
    pod = engine_pod()
    del pod["metadata"]["annotations"][annotation]
    with pytest.raises(BackingError, match=annotation):
        backing_for_pod(pod)


def test_missing_model_label_is_named():
    pod = engine_pod()
    del pod["metadata"]["labels"]["kiban.dev/model"]
    with pytest.raises(BackingError, match="kiban.dev/model"):
        backing_for_pod(pod)


def test_served_name_falls_back_to_the_vllm_arg():
    pod = engine_pod()
    del pod["metadata"]["annotations"]["kiban.dev/served-model-name"]
    assert backing_for_pod(pod).served_model_name == "llama-8b"
    pod["spec"]["containers"][0]["args"] = ["m"]
    with pytest.raises(BackingError, match="served-model-name"):
        backing_for_pod(pod)


def test_unknown_accelerator_is_a_backing_error_naming_it():
    pod = engine_pod()
    pod["metadata"]["annotations"]["kiban.dev/accelerator-profile"] = "tpu-v5"
    with pytest.raises(BackingError, match="tpu-v5"):
        backing_for_pod(pod)


def test_only_running_pods_not_being_deleted_are_serving():
    pod = engine_pod()
    assert pod_is_serving(pod)
    assert not pod_is_serving({**pod, "status": {"phase": "Pending"}})
    deleting = copy.deepcopy(pod)
    deleting["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert not pod_is_serving(deleting)


def test_arg_value_reads_both_spellings():
    assert arg_value(["--a", "1", "--b=2"], "--a") == "1"
    assert arg_value(["--a", "1", "--b=2"], "--b") == "2"
    assert arg_value(["--a"], "--a") is None


def test_profile_picks_the_nearest_model_size():
    assert profile_name_for("nvidia-l4", "8B") == "nvidia-l4/8B"
    assert profile_name_for("nvidia-h100-80gb", "70B") == "nvidia-h100-80gb/70B"
    assert profile_name_for("nvidia-l4", "500M") == "nvidia-l4/1B"


def test_the_drain_comes_from_the_pod_as_the_kubelet_and_vllm_read_it():
    """The simulator drains for the pod's --shutdown-timeout; the backer kills it at the pod's
    terminationGracePeriodSeconds (the operator's pod sets both)."""
    pod = engine_pod()
    args = pod["spec"]["containers"][0]["args"]
    backing = backing_for_pod(pod)
    assert backing.shutdown_timeout_s == int(arg_value(args, "--shutdown-timeout")) > 0
    assert backing.grace_period_s == pod["spec"]["terminationGracePeriodSeconds"] > backing.shutdown_timeout_s


def test_a_pod_without_drain_settings_gets_vllms_and_kubernetes_defaults():
    pod = engine_pod()
    container = pod["spec"]["containers"][0]
    flag = container["args"].index("--shutdown-timeout")
    del container["args"][flag:flag + 2]
    del pod["spec"]["terminationGracePeriodSeconds"]
    backing = backing_for_pod(pod)
    assert (backing.shutdown_timeout_s, backing.grace_period_s) == (0, 30.0)


def test_a_bad_shutdown_timeout_is_named():
    pod = engine_pod()
    args = pod["spec"]["containers"][0]["args"]
    args[args.index("--shutdown-timeout") + 1] = "soon"
    with pytest.raises(BackingError, match="--shutdown-timeout"):
        backing_for_pod(pod)
