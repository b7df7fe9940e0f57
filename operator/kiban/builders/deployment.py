"""The vLLM Deployment of a FoundationModel (pure: spec, config and sizing in, a dict out).

Decisions, so the reconciler and readers need not rediscover them:
- Replicas are always set, from `spec.scaling.desired_replicas()` unless the caller passes a number.
  The autoscaler never writes the Deployment: it writes spec.scaling.replicas through the
  FoundationModel's scale subresource (as KubeAI does), so the operator is the Deployment's
  only writer and nothing fights over its replicas.
- Model sources: hf://ORG/REPO is served as ORG/REPO and downloaded into the cache volume
  (HF_HOME); pvc://CLAIM/PATH mounts CLAIM read-only at /models/CLAIM and serves
  /models/CLAIM/PATH; s3://BUCKET/PREFIX is streamed by vLLM's Run:ai model streamer
  (`--load-format runai_streamer`, shipped in the vllm-openai image), with AWS_* credentials
  from spec.model.credentialsSecretRef. No init container and no extra image.
- The API key reaches vLLM as the VLLM_API_KEY environment variable (read by `vllm serve`
  when --api-key is absent), from the Secret: never in args, where `ps` would show it.
- OpenShift restricted SCC: no fixed UID (unless KIBAN_RUN_AS_USER), non-root, no privilege
  escalation, all capabilities dropped, RuntimeDefault seccomp, read-only root filesystem
  with writable /tmp (HOME), /cache (HF_HOME, vLLM caches) and a memory-backed /dev/shm.
- enableServiceLinks is off: a Service named `vllm` would inject VLLM_PORT, which vLLM reads.
- Rollouts follow spec.rollout, by default surging one pod and keeping all serving pods
  (maxUnavailable 0): the SLO holds during a rollout, at the cost of one spare replica's GPUs
  while it runs; maxUnavailable is lowered so ready replicas never drop below minReplicas.
  A ReadWriteOnce or ReadWriteOncePod cache (one replica at most, the CRD says) cannot be
  mounted by a second pod, so those models roll out by Recreate whatever spec.rollout says: the
  old pod goes first, then the new one mounts.
- Scale-down drains: vLLM 0.33 aborts in-flight requests on SIGTERM unless --shutdown-timeout
  is > 0, so the engine gets ENGINE_DRAIN_SECONDS, within the pod's grace period and with
  time left for its teardown before the kubelet's SIGKILL (the gateway already stops routing
  to a pod once it is terminating).
- Every flag engine_args sets is in kiban.api.engine_policy.OWNED_FLAGS, so extraArgs cannot
  override it (a test derives the table from this function's output).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kiban.api.v1alpha1 import Adapter, FoundationModel, FoundationModelSpec, Quantization
from kiban.builders.common import object_meta, with_spec_hash
from kiban.builders.labels import (
    ACCELERATOR_PROFILE_ANNOTATION,
    MODEL_PARAMETERS_ANNOTATION,
    SERVED_MODEL_NAME_ANNOTATION,
    common_labels,
    selector_labels,
)
from kiban.builders.names import cache_claim_name, workload_name
from kiban.config import AcceleratorProfile, OperatorConfig
from kiban.sizing.gpu import GpuSizing

CONTAINER_NAME = "vllm"
HTTP_PORT = 8000
PORT_NAME = "http"
CACHE_MOUNT = "/cache"
MODELS_MOUNT = "/models"
HEALTH_PATH = "/health"
STARTUP_PERIOD_SECONDS = 10
MAX_LORAS_PER_BATCH = 4  # --max-loras: adapter slots per batch; more adapters wait in the CPU cache



def pvc_source(uri: str) -> tuple[str, str]:
    """pvc://CLAIM/PATH -> (CLAIM, PATH without leading slash; '' for the claim's root)."""
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return claim, path.strip("/")


def local_path(uri: str) -> str:
    """What vLLM is given for a model or adapter URI (hf repo id, mounted path, or the s3 URI)."""
    if uri.startswith("hf://"):
        return uri.removeprefix("hf://")
    if uri.startswith("pvc://"):
        claim, path = pvc_source(uri)
        return f"{MODELS_MOUNT}/{claim}" + (f"/{path}" if path else "")
    return uri  # s3:// is read by the Run:ai streamer directly


def source_claims(spec: FoundationModelSpec) -> list[str]:
    """PVCs holding the model or adapters, each mounted once, in a stable order."""
    uris = [spec.model.uri, *(a.uri for a in spec.adapters)]
    return sorted({pvc_source(u)[0] for u in uris if u.startswith("pvc://")})

TERMINATION_GRACE_SECONDS = 60  # the kubelet's SIGKILL comes this long after SIGTERM
ENGINE_DRAIN_SECONDS = 50  # vLLM's --shutdown-timeout: in-flight requests may finish, then teardown


def max_lora_rank(adapters: list[Adapter]) -> int:
    ranks = [a.rank for a in adapters if a.rank is not None]
    return max(ranks) if ranks else 16


def engine_args(fm: FoundationModel, sizing: GpuSizing, distributed: Sequence[str] = ()) -> list[str]:
    """`vllm serve` arguments: the model first, then only flags that vLLM 0.33 accepts.

    distributed: a multi-node member's flags (--nnodes ...), placed after the parallel sizes.
    """
    spec = fm.spec
    model = spec.model
    args = [
        local_path(model.uri),
        "--served-model-name", fm.served_model_name,
        "--host", "0.0.0.0",
        "--port", str(HTTP_PORT),
        "--tensor-parallel-size", str(sizing.tensor_parallel_size),
        "--shutdown-timeout", str(ENGINE_DRAIN_SECONDS),
    ]
    if sizing.pipeline_parallel_size > 1:
        args += ["--pipeline-parallel-size", str(sizing.pipeline_parallel_size)]
    args += list(distributed)
    args += ["--dtype", model.dtype.value]
    if model.quantization is not Quantization.none:
        args += ["--quantization", model.quantization.value]
    if model.max_model_len is not None:
        args += ["--max-model-len", str(model.max_model_len)]
    args += ["--gpu-memory-utilization", f"{spec.engine.gpu_memory_utilization:g}"]
    if spec.engine.max_num_seqs is not None:
        args += ["--max-num-seqs", str(spec.engine.max_num_seqs)]
    if model.revision:
        args += ["--revision", model.revision]
    if model.trust_remote_code:
        args.append("--trust-remote-code")
    if model.scheme == "s3":
        args += ["--load-format", "runai_streamer"]
    if spec.adapters:
        max_loras = min(len(spec.adapters), MAX_LORAS_PER_BATCH)
        args += ["--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank(spec.adapters))]
        if len(spec.adapters) > max_loras:
            args += ["--max-cpu-loras", str(len(spec.adapters))]
        args += ["--lora-modules", *(f"{a.name}={local_path(a.uri)}" for a in spec.adapters)]
    return args + list(spec.engine.extra_args)


def engine_env(fm: FoundationModel, *, api_key: bool = True) -> list[dict[str, Any]]:
    """Writable locations for a read-only root filesystem, then the user's env, then the API key
    (api_key False: a headless multi-node worker, which serves no API)."""
    env: dict[str, dict[str, Any]] = {
        "HOME": {"name": "HOME", "value": "/tmp"},
        "HF_HOME": {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
        "VLLM_CACHE_ROOT": {"name": "VLLM_CACHE_ROOT", "value": f"{CACHE_MOUNT}/vllm"},
        "XDG_CACHE_HOME": {"name": "XDG_CACHE_HOME", "value": f"{CACHE_MOUNT}/xdg"},
        "VLLM_NO_USAGE_STATS": {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
    }
    for var in fm.spec.engine.env:
        env[var.name] = var.model_dump(mode="json", by_alias=True, exclude_none=True)
    ref = fm.spec.api_key_secret_ref
    if ref is not None and api_key:
        env["VLLM_API_KEY"] = {
            "name": "VLLM_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }
    return list(env.values())


def _http_probe(period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": HEALTH_PATH, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def probes(config: OperatorConfig) -> dict[str, dict[str, Any]]:
    """Startup tolerates config.startup_timeout_seconds of model loading; then readiness and liveness."""
    return {
        "startupProbe": _http_probe(
            STARTUP_PERIOD_SECONDS, 5, math.ceil(config.startup_timeout_seconds / STARTUP_PERIOD_SECONDS)
        ),
        "readinessProbe": _http_probe(5, 5, 3),
        "livenessProbe": _http_probe(15, 10, 6),
    }


def volumes_and_mounts(fm: FoundationModel, config: OperatorConfig) -> tuple[list[dict], list[dict]]:
    cache = fm.spec.cache
    if cache.type == "pvc":
        cache_volume: dict[str, Any] = {"persistentVolumeClaim": {"claimName": cache_claim_name(fm.name)}}
    else:
        cache_volume = {"emptyDir": {"sizeLimit": cache.size} if cache.size else {}}
    volumes = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size_limit}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "model-cache", **cache_volume},
    ]
    mounts = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "model-cache", "mountPath": CACHE_MOUNT},
    ]
    for index, claim in enumerate(source_claims(fm.spec)):
        name = f"source-{index}"
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": f"{MODELS_MOUNT}/{claim}", "readOnly": True})
    return volumes, mounts


def resources(fm: FoundationModel, profile: AcceleratorProfile, sizing: GpuSizing) -> dict[str, Any]:
    """The user's CPU and memory plus the profile's GPU resource (requests equal limits for GPUs), per pod."""
    gpus = {profile.resource_name: str(sizing.gpus_per_node)}  # per pod: all of a one-node replica
    user = fm.spec.engine.resources
    return {"requests": {**user.requests, **gpus}, "limits": {**user.limits, **gpus}}


def spec_affinity(fm: FoundationModel) -> dict[str, Any]:
    """spec.scheduling.affinity as core/v1 Affinity, as the user wrote it (defaults left out)."""
    affinity = fm.spec.scheduling.affinity
    return affinity.model_dump(mode="json", by_alias=True, exclude_defaults=True) if affinity else {}


def scheduling(fm: FoundationModel, profile: AcceleratorProfile) -> dict[str, Any]:
    """Profile node selector and tolerations merged with the spec's; affinity and priority passed through."""
    spec = fm.spec.scheduling
    tolerations = [dict(t) for t in profile.tolerations]
    for toleration in spec.tolerations:
        body = toleration.model_dump(mode="json", by_alias=True, exclude_none=True)
        if body not in tolerations:
            tolerations.append(body)
    out: dict[str, Any] = {
        "nodeSelector": {**profile.node_selector, **spec.node_selector},
        "tolerations": tolerations,
    }
    if spec.affinity:
        out["affinity"] = spec_affinity(fm)
    if spec.priority_class_name:
        out["priorityClassName"] = spec.priority_class_name
    return out


def pod_security_context(config: OperatorConfig) -> dict[str, Any]:
    context: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if config.run_as_user is not None:
        context["runAsUser"] = config.run_as_user
    return context


CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def engine_container(fm: FoundationModel, config: OperatorConfig, sizing: GpuSizing,
                     distributed: Sequence[str] = ()) -> dict[str, Any]:
    """The `vllm serve` container that serves the API on port 8000 (a Deployment's pods, a
    multi-node group's leader)."""
    profile = config.profile(fm.spec.accelerator.profile)
    _, mounts = volumes_and_mounts(fm, config)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": fm.spec.engine.image or config.vllm_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["vllm", "serve"],
        "args": engine_args(fm, sizing, distributed),
        "ports": [{"name": PORT_NAME, "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": engine_env(fm),
        "resources": resources(fm, profile, sizing),
        **probes(config),
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": mounts,
    }
    if fm.spec.model.credentials_secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": fm.spec.model.credentials_secret_ref.name}}]
    return container


def template_annotations(fm: FoundationModel, profile: AcceleratorProfile) -> dict[str, str]:
    annotations = {
        ACCELERATOR_PROFILE_ANNOTATION: profile.name,
        SERVED_MODEL_NAME_ANNOTATION: fm.served_model_name,
    }
    if fm.spec.model.parameters:
        annotations[MODEL_PARAMETERS_ANNOTATION] = fm.spec.model.parameters
    return annotations


def pod_spec(fm: FoundationModel, config: OperatorConfig, containers: list[dict[str, Any]],
             affinity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine pod: no API token, no service links, the security context, placement, volumes.
    affinity replaces spec.scheduling.affinity when given (a multi-node group merges its own in)."""
    profile = config.profile(fm.spec.accelerator.profile)
    volumes, _ = volumes_and_mounts(fm, config)
    placement = scheduling(fm, profile)
    if affinity is not None:
        placement["affinity"] = affinity
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": pod_security_context(config),
        **placement,
        "containers": containers,
        "volumes": volumes,
    }


def rollout_strategy(fm: FoundationModel, replicas: int) -> dict[str, Any]:
    """spec.rollout's rolling update; Recreate when the cache mounts in one pod only."""
    cache = fm.spec.cache
    if cache.type == "pvc" and cache.access_mode in ("ReadWriteOnce", "ReadWriteOncePod"):
        return {"type": "Recreate"}
    max_surge, max_unavailable = fm.spec.rollout.strategy(replicas, fm.spec.scaling.min_replicas)
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": max_unavailable}}


def build_deployment(
    fm: FoundationModel,
    config: OperatorConfig,
    sizing: GpuSizing,
    *,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The apps/v1 Deployment running `vllm serve` for `fm`."""
    profile = config.profile(fm.spec.accelerator.profile)
    replicas = fm.spec.scaling.desired_replicas() if replicas is None else replicas
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(fm, workload_name(fm.name)),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(fm)},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": config.startup_timeout_seconds + 600,
            "strategy": rollout_strategy(fm, replicas),
            "template": {
                "metadata": {"labels": common_labels(fm), "annotations": template_annotations(fm, profile)},
                "spec": pod_spec(fm, config, [engine_container(fm, config, sizing)]),
            },
        },
    }
    return with_spec_hash(deployment)
