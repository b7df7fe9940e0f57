"""Operator settings from the environment, and the accelerator profiles FoundationModels name.

`load_config(os.environ)` is the one entry point: it reads KIBAN_* variables into a typed,
frozen `OperatorConfig` and merges accelerator profiles from the YAML file named by
KIBAN_ACCELERATOR_PROFILES over the built-in ones (a profile with the same name replaces the
built-in). Bad values raise `ConfigError` naming the variable or profile field.

The built-in profiles match the simulated GPU nodes of the local dev cluster (kiban_dev.devcluster):
same node labels, same extended resource names, same GPUs per node.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
DEFAULT_GATEWAY_POD_LABELS = {"app.kubernetes.io/component": "gateway", "app.kubernetes.io/part-of": "kiban"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class ConfigError(ValueError):
    """An operator setting or accelerator profile is invalid; the message names it."""


class AcceleratorProfile(BaseModel):
    """One kind of accelerator: how to land on it, how to request it, how much memory it has."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid", frozen=True
    )

    name: str
    node_selector: dict[str, str] = Field(description="Node labels of nodes carrying this accelerator.")
    resource_name: str = Field(description="Extended resource requested per GPU, e.g. nvidia.com/gpu.")
    gpu_memory_gib: float = Field(gt=0, alias="gpuMemoryGiB", description="Memory of one GPU (or slice), GiB.")
    gpus_per_node: int = Field(ge=1, description="GPUs (or slices) of this kind on one node.")
    max_gpus_per_replica: int | None = Field(
        default=None,
        ge=1,
        description="Most GPUs one replica may use; 1 for MIG slices (tensor parallel cannot span them).",
    )
    tolerations: tuple[dict[str, Any], ...] = Field(default=(GPU_TOLERATION,))
    product: str = Field(default="", description="Human-readable accelerator name.")

    @property
    def replica_gpu_limit(self) -> int:
        """Most GPUs one replica can get: one node's worth, or the profile's own cap."""
        return min(self.gpus_per_node, self.max_gpus_per_replica or self.gpus_per_node)


BUILTIN_PROFILES: tuple[AcceleratorProfile, ...] = (
    AcceleratorProfile(
        name="nvidia-h100-80gb",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        resource_name="nvidia.com/gpu",
        gpu_memory_gib=80,
        gpus_per_node=8,
        product="NVIDIA H100 80GB HBM3",
    ),
    AcceleratorProfile(
        name="nvidia-l4",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-L4"},
        resource_name="nvidia.com/gpu",
        gpu_memory_gib=24,
        gpus_per_node=4,
        product="NVIDIA L4",
    ),
    AcceleratorProfile(
        name="nvidia-a100-80gb",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        resource_name="nvidia.com/gpu",
        gpu_memory_gib=80,
        gpus_per_node=8,
        product="NVIDIA A100 SXM4 80GB",
    ),
    AcceleratorProfile(
        name="nvidia-mig-1g.10gb",
        node_selector={"nvidia.com/mig.strategy": "mixed"},
        resource_name="nvidia.com/mig-1g.10gb",
        gpu_memory_gib=10,
        gpus_per_node=14,
        max_gpus_per_replica=1,
        product="NVIDIA MIG 1g.10gb slice (A100/H100, mixed strategy)",
    ),
)


class OperatorConfig(BaseModel):
    """Everything the operator reads from its environment, typed and frozen."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    watch_namespace: str | None = Field(default=None, description="Namespace to watch; None watches all.")
    autoscale_interval_seconds: float = Field(default=15.0, gt=0, description="Autoscaler timer period.")
    prometheus_url: str = Field(default="http://prometheus-operated.monitoring.svc:9090")
    prometheus_bearer_token_file: str | None = Field(
        default=None,
        description="File holding a bearer token for Prometheus (re-read per query: projected tokens rotate), "
        "e.g. the ServiceAccount token for OpenShift's thanos-querier.",
    )
    prometheus_ca_file: str | None = Field(
        default=None, description="CA bundle that signed Prometheus' TLS certificate; None uses the system store."
    )
    field_manager: str = Field(default="kiban", min_length=1, max_length=128)
    vllm_image: str = Field(default=DEFAULT_VLLM_IMAGE, min_length=1)
    monitoring_namespace: str = Field(
        default="monitoring", description="Namespace whose Prometheus may scrape engine pods (NetworkPolicy)."
    )
    monitor_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels on PodMonitors so the Prometheus instance selects them."
    )
    run_as_user: int | None = Field(
        default=None,
        ge=1,
        description=(
            "UID for engine pods. None leaves it to the platform (OpenShift's restricted SCC assigns "
            "one); set it on plain Kubernetes when the image's own user is root."
        ),
    )
    startup_timeout_seconds: int = Field(
        default=1800, ge=60, description="How long a pod may take to load its model before it is restarted."
    )
    shm_size_limit: str = Field(default="16Gi", description="Size limit of the memory-backed /dev/shm.")
    gateway_default: bool = Field(
        default=False,
        description="Expose models through the Kiban gateway when spec.exposure.gateway.enabled is unset "
        "(the chart sets it when it installs the gateway).",
    )
    gateway_namespace: str = Field(
        default="kiban-system", min_length=1, description="Namespace of the Kiban gateway pods (NetworkPolicy)."
    )
    gateway_pod_labels: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_GATEWAY_POD_LABELS),
        description="Labels of the Kiban gateway pods, which engine NetworkPolicies admit.",
    )
    gateway_url: str | None = Field(
        default=None, description="The gateway's in-cluster base URL, e.g. http://kiban-gateway.kiban-system.svc:8080 "
        "(status.endpoint of gateway-exposed models)."
    )
    max_nodes_per_replica: int = Field(
        default=4,
        ge=1,
        le=16,
        description=(
            "Most nodes one replica may span (a LeaderWorkerSet group); a model that needs more is "
            "reported as ModelDoesNotFit."
        ),
    )
    log_level: str = Field(default="INFO")
    accelerator_profiles: dict[str, AcceleratorProfile] = Field(
        default_factory=lambda: {p.name: p for p in BUILTIN_PROFILES}
    )

    def profile(self, name: str) -> AcceleratorProfile:
        """The named profile; ConfigError listing the known ones when it does not exist."""
        try:
            return self.accelerator_profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.accelerator_profiles))
            raise ConfigError(f"spec.accelerator.profile: unknown profile {name!r}; known: {known}") from None

    @field_validator("watch_namespace")
    @classmethod
    def _all_namespaces(cls, value: str | None) -> str | None:
        return None if value in (None, "", "*") else value


# Environment variable -> OperatorConfig field.
ENV_FIELDS: dict[str, str] = {
    "KIBAN_WATCH_NAMESPACE": "watch_namespace",
    "KIBAN_AUTOSCALE_INTERVAL_SECONDS": "autoscale_interval_seconds",
    "KIBAN_PROMETHEUS_URL": "prometheus_url",
    "KIBAN_PROMETHEUS_BEARER_TOKEN_FILE": "prometheus_bearer_token_file",
    "KIBAN_PROMETHEUS_CA_FILE": "prometheus_ca_file",
    "KIBAN_FIELD_MANAGER": "field_manager",
    "KIBAN_VLLM_IMAGE": "vllm_image",
    "KIBAN_MONITORING_NAMESPACE": "monitoring_namespace",
    "KIBAN_MONITOR_LABELS": "monitor_labels",
    "KIBAN_RUN_AS_USER": "run_as_user",
    "KIBAN_STARTUP_TIMEOUT_SECONDS": "startup_timeout_seconds",
    "KIBAN_SHM_SIZE_LIMIT": "shm_size_limit",
    "KIBAN_MAX_NODES_PER_REPLICA": "max_nodes_per_replica",
    "KIBAN_LOG_LEVEL": "log_level",
    "KIBAN_GATEWAY_DEFAULT": "gateway_default",
    "KIBAN_GATEWAY_NAMESPACE": "gateway_namespace",
    "KIBAN_GATEWAY_POD_LABELS": "gateway_pod_labels",
    "KIBAN_GATEWAY_URL": "gateway_url",
}
LABEL_FIELDS = ("monitor_labels", "gateway_pod_labels")
PROFILES_ENV = "KIBAN_ACCELERATOR_PROFILES"


def parse_labels(text: str, *, source: str) -> dict[str, str]:
    """'a=b,c=d' -> {'a': 'b', 'c': 'd'}; ConfigError naming `source` on a malformed pair."""
    labels: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: expected key=value pairs separated by commas, got {pair!r}")
        labels[key.strip()] = value.strip()
    return labels


def parse_profiles(document: Any, *, source: str) -> dict[str, AcceleratorProfile]:
    """Profiles from a parsed YAML document `{profiles: {NAME: {nodeSelector: ..., ...}}}`."""
    if not isinstance(document, Mapping) or not isinstance(document.get("profiles"), Mapping):
        raise ConfigError(f"{source}: expected a mapping with a 'profiles' mapping of NAME -> profile")
    profiles: dict[str, AcceleratorProfile] = {}
    for name, body in document["profiles"].items():
        if not isinstance(body, Mapping):
            raise ConfigError(f"{source}: profiles.{name} must be a mapping")
        try:
            profiles[name] = AcceleratorProfile.model_validate({**body, "name": name})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{source}: profiles.{name}.{field}: {first['msg']}") from exc
    return profiles


def load_profiles_file(path: Path) -> dict[str, AcceleratorProfile]:
    """Read accelerator profiles from a YAML file (see parse_profiles for the shape)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{PROFILES_ENV}: cannot read {path}: {exc.strerror}") from exc
    return parse_profiles(yaml.safe_load(text), source=f"{PROFILES_ENV} ({path})")


def load_config(environ: Mapping[str, str]) -> OperatorConfig:
    """Build the operator's configuration from an environment mapping (pass os.environ)."""
    values: dict[str, Any] = {}
    for env_name, field in ENV_FIELDS.items():
        raw = environ.get(env_name)
        if raw is None or (raw == "" and field != "watch_namespace"):
            continue
        values[field] = parse_labels(raw, source=env_name) if field in LABEL_FIELDS else raw
    profiles = {p.name: p for p in BUILTIN_PROFILES}
    if environ.get(PROFILES_ENV):
        profiles.update(load_profiles_file(Path(environ[PROFILES_ENV])))
    values["accelerator_profiles"] = profiles
    try:
        return OperatorConfig.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0])
        env_name = next((k for k, v in ENV_FIELDS.items() if v == field), field)
        raise ConfigError(f"{env_name}: {first['msg']} (got {first.get('input')!r})") from exc
