"""The vLLM Deployment: flags vLLM accepts, secrets out of args, probes, security, GPUs, sources."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fm_cases import CASES, REPO, load_fm, with_spec
from kiban.builders import build_children, build_deployment
from kiban.builders.deployment import engine_args
from kiban.config import load_config
from kiban.sizing.gpu import resolve_sizing

FLAGS_FILE = REPO / ".." / "shared" / "reference" / "vllm-0.33-serve-flags.txt"


def known_flags(path: Path = FLAGS_FILE) -> set[str]:
    """Every long flag vllm serve 0.33 accepts; boolean flags also in their --no- form."""
    flags = {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("--")}
    return flags | {"--no-" + f.removeprefix("--") for f in flags}


def deployment_of(fm, config=None, **kwargs):
    config = config or load_config({})
    return build_deployment(fm, config, resolve_sizing(fm.spec, config.profile(fm.spec.accelerator.profile)), **kwargs)


def container(deployment):
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_by_name(c):
    return {e["name"]: e for e in c["env"]}


def with_s3(fm):
    return with_spec(fm, **{"model.uri": "s3://models-bucket/llama/8b", "model.credentialsSecretRef": {"name": "s3"}})


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_emitted_flag_exists_in_vllm_0_33(case):
    flags = known_flags()
    assert len(flags) > 300  # the reference file was read, not an empty stand-in
    fm = load_fm(CASES[case])
    args = container(deployment_of(fm))["args"]
    emitted = [a.split("=", 1)[0] for a in args if a.startswith("--")]
    assert emitted, "no flags at all"
    assert sorted(set(emitted) - flags) == []


def test_s3_model_flags_exist_too(minimal):
    args = container(deployment_of(with_s3(minimal)))["args"]
    assert {a for a in args if a.startswith("--")} <= known_flags()


def test_flag_check_would_catch_an_invented_flag(minimal):
    """An invented flag never reaches the builders (the API refuses it); forced past validation,
    the reference list above would catch it."""
    with pytest.raises(ValueError, match="--enable-turbo-mode.*not an option of vllm serve"):
        with_spec(minimal, **{"engine.extraArgs": ["--enable-turbo-mode"]})
    forced = minimal.model_copy(deep=True)
    forced.spec.engine.extra_args = ["--enable-turbo-mode"]
    args = container(deployment_of(forced))["args"]
    assert "--enable-turbo-mode" in args and "--enable-turbo-mode" not in known_flags()


def _every_branch(full):
    """Specs that make engine_args emit every flag it can: the full fixture (pvc model, adapters
    beyond --max-loras, quantization, trust, pipeline stages), an s3 model and a revision."""
    s3 = with_s3(full)
    revision = with_spec(full, **{"model.uri": "hf://org/repo", "model.revision": "main"})
    return [full, s3, revision]


def test_the_operator_owned_flags_are_what_the_builder_emits(full):
    """engine_policy.OWNED_FLAGS is derived from engine_args: every flag the operator sets is
    refused in extraArgs (a later copy would win over the spec), and the table names no flag
    the operator sets that it does not emit, apart from the ones it owns by other means."""
    from kiban.api.engine_policy import OWNED_FLAGS, TRUST_REMOTE_CODE

    emitted = set()
    for fm in _every_branch(full):
        sizing = resolve_sizing(fm.spec, load_config({}).profile(fm.spec.accelerator.profile))
        emitted |= {a for a in engine_args(fm, sizing) if a.startswith("--")}
    emitted -= set(full.spec.engine.extra_args)  # the user's own, appended last
    assert {"--lora-modules", "--max-cpu-loras", "--load-format", "--revision", "--pipeline-parallel-size"} <= emitted
    assert emitted - {TRUST_REMOTE_CODE} <= set(OWNED_FLAGS), "a flag the builder sets is not refused in extraArgs"
    # owned without being emitted: set another way (env, the positional model, the cache) or
    # part of the serving/parallel wiring and monitoring the operator relies on
    not_emitted = set(OWNED_FLAGS) - emitted
    assert {"--api-key", "--model", "--download-dir"} <= not_emitted


def test_minimal_example_serves_the_hf_repo_with_expected_flags(minimal):
    args = container(deployment_of(minimal))["args"]
    assert args[0] == "meta-llama/Llama-3.1-8B-Instruct"
    pairs = dict(zip(args[1::2], args[2::2]))
    assert pairs["--served-model-name"] == "llama-8b"
    assert pairs["--port"] == "8000" and pairs["--host"] == "0.0.0.0"
    assert pairs["--tensor-parallel-size"] == "1"
    assert pairs["--gpu-memory-utilization"] == "0.9"
    assert "--quantization" not in args and "--enable-lora" not in args


def test_api_key_comes_from_the_secret_never_args(full):
    c = container(deployment_of(full))
    assert not any("api-key" in a for a in c["args"])
    assert env_by_name(c)["VLLM_API_KEY"] == {
        "name": "VLLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "full-api-key", "key": "token"}},
    }


def test_user_env_follows_the_defaults_without_duplicates(full):
    c = container(deployment_of(full))
    names = [e["name"] for e in c["env"]]
    assert len(names) == len(set(names))
    assert env_by_name(c)["HF_HOME"]["value"] == "/cache/huggingface"
    assert env_by_name(c)["VLLM_LOGGING_LEVEL"]["value"] == "DEBUG"


def test_the_operator_owned_env_cannot_be_overridden(full):
    """HF_HOME, VLLM_API_KEY and the other names the builder sets are refused by the API."""
    c = container(deployment_of(full))
    for name in (e["name"] for e in c["env"] if e["name"] not in {"VLLM_LOGGING_LEVEL", "HF_TOKEN"}):
        with pytest.raises(ValueError, match=f"{name} is refused"):
            with_spec(full, **{"engine.env": [{"name": name, "value": "x"}]})


def test_startup_probe_tolerates_thirty_minutes_of_loading(minimal):
    c = container(deployment_of(minimal))
    startup = c["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 30 * 60
    assert c["readinessProbe"]["httpGet"]["path"] == c["livenessProbe"]["httpGet"]["path"] == "/health"


def test_startup_budget_follows_config(minimal):
    config = load_config({"KIBAN_STARTUP_TIMEOUT_SECONDS": "3605"})
    startup = container(deployment_of(minimal, config))["startupProbe"]
    assert startup["failureThreshold"] == math.ceil(3605 / startup["periodSeconds"])


def test_security_context_fits_openshift_restricted_scc(minimal):
    d = deployment_of(minimal)
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    assert "runAsUser" not in pod["securityContext"] and "runAsUser" not in c["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", "/cache", "/dev/shm"} <= mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert "HF_HUB_OFFLINE" not in env_by_name(c)
    assert pod["enableServiceLinks"] is False


def test_run_as_user_only_when_configured(minimal):
    pod = deployment_of(minimal, load_config({"KIBAN_RUN_AS_USER": "1000"}))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1000


@pytest.mark.parametrize(
    ("case", "resource", "gpus", "selector"),
    [
        ("model", "nvidia.com/gpu", "1", {"nvidia.com/gpu.product": "NVIDIA-L4"}),
        ("llama-70b-h100", "nvidia.com/gpu", "4", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
        ("mig-small", "nvidia.com/mig-1g.10gb", "1", {"nvidia.com/mig.strategy": "mixed"}),
    ],
)
def test_gpu_resources_and_placement_follow_the_profile(case, resource, gpus, selector):
    d = deployment_of(load_fm(CASES[case]))
    c = container(d)
    assert c["resources"]["limits"][resource] == gpus == c["resources"]["requests"][resource]
    pod = d["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == selector
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    annotations = d["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kiban.dev/accelerator-profile"] == load_fm(CASES[case]).spec.accelerator.profile
    assert annotations["kiban.dev/model-parameters"] == load_fm(CASES[case]).spec.model.parameters


def test_scheduling_passthrough_merges_with_profile(full):
    pod = deployment_of(full)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
        "topology.kubernetes.io/zone": "eu-west-1a",
    }
    assert {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["priorityClassName"] == "inference-high"
    assert "podAntiAffinity" in pod["affinity"]


def test_pvc_model_is_mounted_read_only_and_served_by_path(full):
    d = deployment_of(full)
    c = container(d)
    assert c["args"][0] == "/models/model-store/mistral/Mixtral-8x7B-Instruct"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models/model-store"]["readOnly"] is True
    assert mounts["/models/lora-store"]["readOnly"] is True
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in d["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"model-store", "lora-store", "full-cache"}


def test_s3_model_is_streamed_with_credentials_from_the_secret(minimal):
    c = container(deployment_of(with_s3(minimal)))
    assert c["args"][0] == "s3://models-bucket/llama/8b"
    assert c["args"][c["args"].index("--load-format") + 1] == "runai_streamer"
    assert c["envFrom"] == [{"secretRef": {"name": "s3"}}]


def test_lora_adapters_are_enabled_with_rank_and_modules(full):
    args = container(deployment_of(full))["args"]
    assert "--enable-lora" in args
    assert args[args.index("--max-lora-rank") + 1] == "64"
    assert args[args.index("--max-loras") + 1] == "4"
    assert args[args.index("--max-cpu-loras") + 1] == "5"
    start = args.index("--lora-modules") + 1
    assert args[start : start + 5] == [
        "legal=/models/lora-store/legal",
        "medical=example-org/mixtral-medical-lora",
        "finance=/models/lora-store/finance",
        "code=example-org/mixtral-code-lora",
        "chat=example-org/mixtral-chat-lora",
    ]


def test_explicit_parallelism_emits_pipeline_stages(full):
    args = container(deployment_of(full))["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--pipeline-parallel-size") + 1] == "2"
    assert container(deployment_of(full))["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_engine_image_defaults_to_config_and_can_be_overridden(minimal, full):
    assert container(deployment_of(minimal))["image"] == "vllm/vllm-openai:v0.33.0"
    assert container(deployment_of(minimal, load_config({"KIBAN_VLLM_IMAGE": "mirror/vllm:1"})))["image"] == "mirror/vllm:1"
    assert container(deployment_of(full))["image"] == "registry.example.com/mirror/vllm-openai:v0.33.0"


@pytest.mark.parametrize(
    ("scaling", "expected"),
    [
        ({"minReplicas": 1, "maxReplicas": 4}, 1),
        ({"minReplicas": 0, "maxReplicas": 4}, 0),
        ({"minReplicas": 1, "maxReplicas": 4, "replicas": 3}, 3),
        ({"minReplicas": 2, "maxReplicas": 4, "replicas": 3, "autoscaling": False}, 3),
    ],
)
def test_desired_replicas(minimal, scaling, expected):
    fm = with_spec(minimal, scaling={**scaling, "slo": {"ttftP95Ms": 500}})
    assert fm.spec.scaling.desired_replicas() == expected
    assert deployment_of(fm)["spec"]["replicas"] == expected


def test_replicas_override_wins(minimal):
    assert deployment_of(minimal, replicas=3)["spec"]["replicas"] == 3


def test_selector_labels_are_on_the_pod_template(minimal):
    d = deployment_of(minimal)
    selector = d["spec"]["selector"]["matchLabels"]
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    for key in ("name", "instance", "component", "managed-by", "part-of"):
        assert f"app.kubernetes.io/{key}" in d["metadata"]["labels"]
    assert d["metadata"]["labels"]["kiban.dev/model"] == "llama-8b"


def test_spec_hash_is_stable_and_tracks_changes(minimal, config):
    first = deployment_of(minimal)["metadata"]["annotations"]["kiban.dev/spec-hash"]
    again = deployment_of(minimal)["metadata"]["annotations"]["kiban.dev/spec-hash"]
    changed = deployment_of(with_spec(minimal, **{"engine.maxNumSeqs": 64}))["metadata"]["annotations"]["kiban.dev/spec-hash"]
    assert first == again != changed
    assert len(first) == 16


def test_engine_args_start_with_the_model(minimal):
    sizing = resolve_sizing(minimal.spec, load_config({}).profile("nvidia-l4"))
    assert engine_args(minimal, sizing)[0] == "meta-llama/Llama-3.1-8B-Instruct"


def test_build_children_rejects_an_unknown_profile(minimal, config):
    from kiban.config import ConfigError

    fm = with_spec(minimal, **{"accelerator.profile": "tpu-v5e"})
    with pytest.raises(ConfigError, match="spec.accelerator.profile.*tpu-v5e.*nvidia-l4"):
        build_children(fm, config)


@pytest.mark.parametrize(("access_mode", "strategy"), [
    ("ReadWriteMany", "RollingUpdate"), ("ReadWriteOnce", "Recreate"), ("ReadWriteOncePod", "Recreate"),
])
def test_a_single_attach_cache_is_rolled_out_by_recreate(full, access_mode, strategy):
    """A surge pod could never mount a ReadWriteOnce(Pod) cache the old pod holds: the rollout
    would wait forever on Multi-Attach, so those models replace their one pod instead."""
    fm = with_spec(full, **{"cache.accessMode": access_mode, "scaling.minReplicas": 1, "scaling.maxReplicas": 1,
                            "scaling.replicas": 1, "scaling.gpuBudget": 4})
    assert deployment_of(fm)["spec"]["strategy"]["type"] == strategy


def test_a_single_attach_cache_with_more_than_one_replica_is_refused(full):
    with pytest.raises(ValueError, match="maxReplicas must be 1"):
        with_spec(full, **{"cache.accessMode": "ReadWriteOnce"})


def test_the_engine_drains_in_flight_requests_within_the_pods_grace_period(minimal):
    """vLLM 0.33 aborts every in-flight request on SIGTERM unless --shutdown-timeout > 0
    (engine/arg_utils.py: default 0 = abort; v1/engine/core.py _handle_shutdown: > 0 drains): a
    scale-down would cut the streams of the pod it removes. The drain must end before the
    kubelet's SIGKILL at terminationGracePeriodSeconds, with time left for the engine's teardown."""
    deployment = deployment_of(minimal)
    args = container(deployment)["args"]
    assert "--shutdown-timeout" in args, args
    drain_s = int(args[args.index("--shutdown-timeout") + 1])
    grace_s = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 0 < drain_s < grace_s
    assert grace_s - drain_s >= 5, "no time left for the engine's teardown before SIGKILL"
